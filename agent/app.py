"""Wire the agent together from its configuration: the one place that builds every part."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

from aos_sm import hw
from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

from .capacity import probe_capacity, usable_runtimes
from .cloud import CloudConnection
from .config import AgentConfig
from .dispatch import Dispatcher
from .gateway import Gateway
from .logs.alerts import JournalAlerts
from .logs.build import build_logs
from .logs.service import LogService
from .nodeconfig import NodeConfigState
from .launcher import Launcher
from .launcher.bundle import CpuCapacity
from .launcher.resources import HostResources
from .nodeconfig_store import NodeConfigService
from .messages import core_alert
from .monitoring import Monitor
from .outbox import Outbox
from .sminfo import build_sm_info
from .unsupported import UnsupportedNetwork

log = logging.getLogger(__name__)


@dataclass
class Agent:
    config: AgentConfig
    outbox: Outbox
    gateway: Gateway
    dispatcher: Dispatcher
    node_config: NodeConfigService
    launcher: Launcher
    cloud: CloudConnection
    capacity: hw.NodeCapacity
    logs: LogService
    monitor: Monitor  # the launcher registers its instances here (InstanceMonitorPort)
    runtimes: Tuple[str, ...]  # the runtime types registered in SMInfo: the ones that can run here
    journal_alerts: Optional[JournalAlerts] = None

    def start(self) -> None:
        self.monitor.start()
        if self.journal_alerts is not None:
            self.journal_alerts.start()
        # Instances come back before any CM connects (offline autonomy), and registration's
        # NodeInstancesStatus already sees the ones that still run.
        self.launcher.start()
        self.gateway.start()

    def stop(self, timeout: float = 5.0) -> bool:
        stopped = self.gateway.stop(timeout)
        self.launcher.stop(timeout)
        stopped = self.monitor.stop(timeout) and stopped
        self.logs.close()
        if self.journal_alerts is not None:
            stopped = self.journal_alerts.stop(timeout) and stopped
        return stopped


class _Registration:
    """SMInfo and NodeInstancesStatus for each (re)connect.

    Capacity is probed once at start (the CPU does not change under a running agent); the
    resources file is read on every connect, so an operator's fix applies at the next session.
    """

    def __init__(self, config: AgentConfig, capacity: hw.NodeCapacity, runtimes: Tuple[str, ...],
                 launcher: Launcher, outbox: Outbox, root: Path) -> None:
        self._config = config
        self._runtimes = runtimes
        self._capacity = capacity
        self._launcher = launcher
        self._outbox = outbox
        self._root = root
        self._reported: Tuple[str, ...] = ()

    def __call__(self) -> Tuple[sm_pb2.SMInfo, sm_pb2.NodeInstancesStatus]:
        resources = hw.load_resources(self._config.resources_config_file, self._root)
        if resources.problems != self._reported:
            for problem in resources.problems:
                log.error("resources config: %s", problem)
                self._outbox.send(core_alert(f"resources config: {problem}"))
            self._reported = resources.problems
        sm_info = build_sm_info(self._config.node_id, self._runtimes, self._capacity, resources)
        return sm_info, self._launcher.node_instances_status()


def build_agent(config: AgentConfig, *, target: Optional[str] = None, root: Path = Path("/"),
                connect_timeout: float = 5.0) -> Agent:
    """Build every part of the agent; ``target`` overrides ``cmServerURL`` (demo, tests)."""
    address = target or config.cm_server_url
    if not address:
        raise ValueError("no CM address: set cmServerURL")
    outbox = Outbox()
    capacity = probe_capacity(config, root)
    for warning in capacity.warnings:
        log.warning("hardware probe: %s", warning)
    node_config = NodeConfigService(config.node_config_file)
    if node_config.state == NodeConfigState.FAILED:
        outbox.send(core_alert(f"stored node config {config.node_config_file} is unreadable; state failed"))
    monitor = Monitor(sender=outbox, capacity=capacity, poll_period=config.poll_period,
                      average_window=config.average_window, partitions=config.monitoring_partitions,
                      uplink_interfaces=config.uplink_interfaces, root=root)
    monitor.on_node_config(node_config.current())
    node_config.add_listener(monitor.on_node_config)
    gateways: List[Gateway] = []
    usable = usable_runtimes(config, capacity.cgroups.mode)
    for problem in usable.problems:
        log.warning("%s", problem)
        outbox.send(core_alert(problem))
    launcher = Launcher(
        sender=outbox,
        working_dir=config.working_dir,
        runtimes=usable.by_id,
        # GetBlobsInfos goes through the gateway, built below: bound late.
        resolver=lambda digests: gateways[0].get_blobs_infos(digests),
        monitor=monitor,
        cgroup_parent=config.cgroup_parent,
        image_ttl=config.image_ttl,
        resources=HostResources(config.resources_config_file, root),
        cpu=CpuCapacity.of_node(capacity),
    )
    cloud = CloudConnection()
    # The offline TTL clock runs on the cloud status CM relays.
    cloud.add_listener(launcher.on_cloud_connection)
    # The launcher records each instance's output and crashes: the logs read them from it.
    logs, journal_alerts = build_logs(config, outbox, launcher)
    dispatcher = Dispatcher(
        sender=outbox,
        node_config=node_config,
        launcher=launcher,
        logs=logs,
        monitoring=monitor,
        network=UnsupportedNetwork(outbox),
        cloud=cloud,
    )
    runtime_types = usable.types
    gateway = Gateway(
        config,
        target=address,
        registration=_Registration(config, capacity, runtime_types, launcher, outbox, root),
        handler=dispatcher.handle,
        outbox=outbox,
        connect_timeout=connect_timeout,
    )
    gateways.append(gateway)
    return Agent(config, outbox, gateway, dispatcher, node_config, launcher, cloud, capacity, logs, monitor,
                 runtime_types, journal_alerts)


def describe(agent: Agent) -> List[str]:
    """A few lines a person reads at start-up: who we are and what we will register."""
    capacity = agent.capacity
    return [
        f"node {agent.config.node_id}: {len(capacity.cpus)} CPUs, {capacity.max_dmips} DMIPS "
        f"({capacity.dmips_provenance}), {capacity.total_ram // (1024 * 1024)} MiB RAM",
        f"runtimes: {', '.join(agent.runtimes) or 'none usable'}; CM: {agent.config.cm_server_url or 'simulator'} "
        f"({agent.config.tls_mode})",
    ]

"""Wire the agent together from its configuration: the one place that builds every part."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Tuple

from aos_sm import hw
from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2
from aos_sm.statemachine import events as ev

from .certs import ExpiryAlerts, ExpiryWatch
from .cloud import CloudConnection
from .config import AgentConfig
from .dispatch import Dispatcher
from .gateway import Gateway
from .iam.instance_secrets import IamInstanceSecrets
from .iam.link import IamLink
from .iam.merge import MergedNode
from .iam.port import IamClient, IamNodeInfo
from .logs.alerts import JournalAlerts
from .logs.build import build_logs
from .logs.service import LogService
from .nodeconfig import NodeConfigState
from .launcher import Launcher
from .launcher.bundle import CpuCapacity
from .launcher.records import container_prefix
from .launcher.resources import HostResources
from .nodeconfig_store import NodeConfigService
from .messages import core_alert
from .monitoring import Monitor
from .outbox import Outbox
from .registration import (Node, RegistrationPlan, discover, load_node_resources, node_capacity_report,
                           plan_registration)
from .transport import BlobUrlClient, GrpcTransport, Transport
from .unsupported import UnsupportedNetwork

if TYPE_CHECKING:
    from .network.manager import NetworkManager

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
    expiry_watch: Optional[ExpiryWatch] = None  # certificates' last 7 days, checked while running
    iam: Optional[IamLink] = None  # the node's IAM: certificates per connect, renewals, node changes
    node_iam: Optional[MergedNode] = None  # IAM's node info as merged into the config
    network: Optional[NetworkManager] = None  # None: network.enabled false

    def start(self) -> None:
        if self.iam is not None:
            self.iam.start()
        if self.network is not None:
            # Before the launcher (its restored instances attach to the networks brought back
            # here) and the monitor (which reads its traffic accounting).
            self.network.start()
        self.monitor.start()
        if self.expiry_watch is not None:
            self.expiry_watch.start()
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
        if self.network is not None:
            self.network.close()
        if self.expiry_watch is not None:
            self.expiry_watch.stop()
        if self.journal_alerts is not None:
            stopped = self.journal_alerts.stop(timeout) and stopped
        if self.iam is not None:
            self.iam.stop()
        return stopped


class _Registration:
    """SMInfo and NodeInstancesStatus for each (re)connect.

    The node was discovered once at start (the CPU does not change under a running agent); the
    resources file is read on every connect, so an operator's fix applies at the next session.
    Problems and CM's cuts are logged and sent as CoreAlerts when they change (the outbox keeps
    them until the session is live, so CM sees them once registered).
    """

    def __init__(self, node: Node, launcher: Launcher, outbox: Outbox, expiry: ExpiryWatch,
                 logged: Tuple[str, ...] = ()) -> None:
        self._node = node
        self._launcher = launcher
        self._outbox = outbox
        self._expiry = expiry
        self._logged = logged  # already in the log at start
        self._alerted: Optional[Tuple[str, ...]] = None

    def __call__(self) -> Tuple[sm_pb2.SMInfo, sm_pb2.NodeInstancesStatus]:
        resources = load_node_resources(self._node)
        plan = plan_registration(self._node, resources)
        notes = registration_notes(resources, plan)
        if notes != self._logged:
            for note in notes:
                log.error("%s", note)
            self._logged = notes
        if notes != self._alerted:
            for note in notes:
                self._outbox.send(core_alert(note))
            self._alerted = notes
        # Kept by the outbox until this session is live: CM hears it right after registering.
        self._expiry.tick()
        return plan.sm_info, self._launcher.node_instances_status()


def registration_notes(resources: hw.ResourcesResult, plan: RegistrationPlan) -> Tuple[str, ...]:
    """Each resource problem and each cut CM's limits forced, one line (and CoreAlert) each."""
    return tuple(f"resources config: {problem}" for problem in resources.problems) + \
        tuple(f"SMInfo: {cut}" for cut in plan.cuts)


def build_agent(config: AgentConfig, *, target: Optional[str] = None, root: Path = Path("/"),
                connect_timeout: float = 5.0, transport: Optional[Transport] = None,
                iam: Optional[Tuple[IamClient, IamNodeInfo]] = None) -> Agent:
    """Build every part of the agent; ``target`` overrides ``cmServerURL`` (demo, tests);
    ``transport`` replaces gRPC (tests run the agent over an in-memory fake); ``iam`` is the
    node's IAM client and the node info it gave before CM is contacted (agent/iam/startup.py)."""
    address = target or config.cm_server_url
    if not address:
        raise ValueError("no CM address: set cmServerURL")
    outbox = Outbox()
    node = discover(config, root, iam=iam[1] if iam is not None else None)
    if node.iam is not None:
        for warning in node.iam.warnings:
            log.warning("IAM node info: %s", warning)
    config, capacity = node.config, node.capacity
    for warning in capacity.warnings:
        log.warning("hardware probe: %s", warning)
    resources = load_node_resources(node)
    start_notes = registration_notes(resources, plan_registration(node, resources))
    for note in start_notes:
        log.error("%s", note)
    node_config = NodeConfigService(config.node_config_file)
    if node_config.state == NodeConfigState.FAILED:
        outbox.send(core_alert(f"stored node config {config.node_config_file} is unreadable; state failed"))
    network = build_network(config, outbox) if config.network_enabled else None
    # With the network manager, download/upload are its accounting of public traffic (NETWORK.md).
    monitor = Monitor(sender=outbox, capacity=capacity, poll_period=config.poll_period,
                      average_window=config.average_window, partitions=config.monitoring_partitions,
                      uplink_interfaces=config.uplink_interfaces, root=root,
                      traffic=network.traffic_port() if network is not None else None)
    monitor.on_node_config(node_config.current())
    node_config.add_listener(monitor.on_node_config)
    # GetBlobsInfos over whichever session is live: the gateway attaches each one.
    blob_urls = BlobUrlClient()
    usable = node.runtimes
    for problem in usable.problems:
        log.warning("%s", problem)
        outbox.send(core_alert(problem))
    launcher = Launcher(
        sender=outbox,
        working_dir=config.working_dir,
        runtimes=usable.by_id,
        resolver=blob_urls,
        monitor=monitor,
        cgroup_parent=config.cgroup_parent,
        image_ttl=config.image_ttl,
        images_part_limit=config.images_part_limit if 0 < config.images_part_limit < 100 else None,
        resources=HostResources(config.resources_config_file, root),
        cpu=CpuCapacity.of_node(capacity),
        secrets=IamInstanceSecrets(iam[0]) if iam is not None and config.iam_protected_server_url else None,
        storage_dir=config.storage_dir,
        state_dir=config.state_dir,
        host_dirs=config.rootfs_host_dirs,
        network=network,
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
        network=network if network is not None else UnsupportedNetwork(outbox),
        cloud=cloud,
    )
    runtime_types = usable.types
    expiry = ExpiryWatch(ExpiryAlerts(config), lambda text: outbox.send(core_alert(text)))
    # A renewal IAM announces takes the file watcher's path: CertificatesChanged, then a
    # reconnect that asks IAM for the certificate again.
    link = IamLink(iam[0], config.cert_storage, iam[1], lambda: gateway.feed(ev.CertificatesChanged())) \
        if iam is not None else None
    if transport is None:
        # IAM's certificate is the client certificate of mtls only; tls and plaintext present none.
        transport = GrpcTransport(config, address, client_certificate=link.client_certificate
                                  if link is not None and config.tls_mode == "mtls" else None)
    gateway = Gateway(
        config,
        target=address,
        registration=_Registration(node, launcher, outbox, expiry, logged=start_notes),
        handler=dispatcher.handle_frame,
        outbox=outbox,
        transport=transport,
        blob_urls=blob_urls,
        connect_timeout=connect_timeout,
    )
    return Agent(config, outbox, gateway, dispatcher, node_config, launcher, cloud, capacity, logs, monitor,
                 runtime_types, journal_alerts, expiry if config.tls_mode != "plaintext" else None, link, node.iam,
                 network)


def build_network(config: AgentConfig, outbox: Outbox) -> NetworkManager:
    """The network manager; its netlink and nftables parts load only here, when it is enabled."""
    from .network.build import real_parts  # noqa: PLC0415 - lazy: costs nothing when disabled
    from .network.manager import NetworkManager  # noqa: PLC0415
    from .network.prerequisites import check_prerequisites  # noqa: PLC0415

    return NetworkManager(working_dir=config.working_dir, sender=outbox,
                          namespace_prefix=container_prefix(config.cgroup_parent),
                          make_adapter=real_parts(config.working_dir / "network"),
                          prerequisites=lambda adapter: check_prerequisites(adapter.namespaces))


def describe(agent: Agent) -> List[str]:
    """A few lines a person reads at start-up: who we are and what we will register."""
    capacity = agent.capacity
    report = node_capacity_report(agent.config, capacity, agent.node_iam)
    # What SMInfo states: the config's (or IAM's) architecture, else the probe's.
    architecture = agent.config.architecture or capacity.architecture
    variant = agent.config.architecture_variant if agent.config.architecture_variant is not None \
        else capacity.arch_variant
    return [
        f"node {agent.config.node_id}: {len(capacity.cpus)} CPUs, {architecture}{'/' + variant if variant else ''}, {report.max_dmips.value} DMIPS "
        f"({report.max_dmips.source}), {capacity.total_ram // (1024 * 1024)} MiB RAM; allowed DMIPS "
        f"{report.allowed_dmips.value}, allowed RAM {report.allowed_ram.value // (1024 * 1024)} MiB",
        f"runtimes: {', '.join(agent.runtimes) or 'none usable'}; CM: {agent.config.cm_server_url or 'simulator'} "
        f"({agent.config.tls_mode})",
    ]

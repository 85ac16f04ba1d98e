"""The monitor: one worker thread samples the node and the registered instances every poll period.

Each poll sends an InstantMonitoring (the Outbox keeps only the latest while CM is away), adds
the samples to the moving averages that AverageMonitoring answers from, and feeds the alert
processors, whose statuses go out as SystemQuotaAlert / InstanceQuotaAlert. Nothing here samples
on CM's reader thread: ``average_monitoring`` only reads what the last polls kept, under a lock.

Traffic (download/upload): with a ``traffic`` port (the network manager's accounting,
NETWORK.md "Traffic accounting and limits") the node and each instance report their public bytes
in the current UTC day, the node as max(its own counters, the sum of its instances); an
instance's ``downloadLimit``/``uploadLimit`` becomes an alert rule of its own (raise once the
limit is used up, ``continue`` every ``LIMIT_ALERT_REPEAT`` s, ``fall`` when the day rolls over)
unless CM gave a rule for that parameter. Without the port (network manager disabled) the node
reports the bytes its uplinks moved during the poll (/proc/net/dev) and instances none.

Failures of the monitor itself (unreadable counters, a poll that raised) become CoreAlerts, at
most once per problem per ``problem_interval`` so a broken file does not flood CM every poll.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Protocol, Sequence, Tuple

from aos_sm import hw
from aos_sm.hw.usage import resolve_cgroup_dirs
from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

from ..errors import AosError
from ..messages import core_alert, now_timestamp
from ..network.traffic import InstanceTraffic, TrafficReading
from ..network.traffic_period import Bytes
from ..nodeconfig import AlertRules, NodeConfig
from ..ports import InstanceKey, MonitoredInstance, Sender
from . import alerts
from .average import MovingAverage, Usage, window_samples
from .samplers import InstanceSampler, NodeSampler

log = logging.getLogger(__name__)

Out = sm_pb2.SMOutgoingMessages

LIMIT_ALERT_REPEAT = 600.0  # seconds between ``continue`` statuses of a used-up traffic limit


class TrafficPort(Protocol):
    """The network manager's traffic accounting (``agent.network.traffic.Traffic``)."""

    def read(self, now: float) -> TrafficReading:
        """Bytes in the current period at ``now`` (wall-clock seconds since the epoch)."""


class ProblemLimiter:
    """Says whether to report a problem now: the first time, then at most once per ``interval``
    seconds while it persists (pure; the caller passes the clock)."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._last: Dict[str, float] = {}

    def should_report(self, problem: str, now: float) -> bool:
        last = self._last.get(problem)
        if last is not None and now - last < self._interval:
            return False
        self._last[problem] = now
        return True


@dataclass
class _Watched:
    instance: MonitoredInstance
    sampler: InstanceSampler
    average: MovingAverage
    processors: List[alerts.AlertProcessor] = field(default_factory=list)
    limit_processors: Dict[str, alerts.AlertProcessor] = field(default_factory=dict)

    def limit_rules(self, traffic: Optional[InstanceTraffic]) -> List[alerts.AlertProcessor]:
        """One processor per traffic limit CM gave no rule for (a removed limit's processor is
        dropped; one raised then gets no ``fall``: its limit no longer exists)."""
        ruled = {processor.rule.parameter for processor in self.processors}
        for parameter, limit in (("download", traffic.download_limit if traffic else None),
                                 ("upload", traffic.upload_limit if traffic else None)):
            if limit is None or parameter in ruled:
                self.limit_processors.pop(parameter, None)
                continue
            rule = alerts.Rule(parameter, 0.0, limit, limit, repeat=LIMIT_ALERT_REPEAT)
            processor = self.limit_processors.get(parameter)
            if processor is None:
                self.limit_processors[parameter] = alerts.AlertProcessor(rule)
            elif processor.rule != rule:
                processor.retune(rule)
        return list(self.limit_processors.values())


_NO_CHANGE = object()


class Monitor:
    """Implements MonitoringPort (AverageMonitoring) and InstanceMonitorPort (the launcher's
    register/unregister)."""

    def __init__(
        self,
        *,
        sender: Sender,
        capacity: hw.NodeCapacity,
        poll_period: float,
        average_window: float,
        partitions: Sequence[Tuple[str, Path]],
        uplink_interfaces: Optional[Sequence[str]] = None,
        root: Path = Path("/"),
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        problem_interval: float = 600.0,
        traffic: Optional[TrafficPort] = None,
    ) -> None:
        self._sender = sender
        self._capacity = capacity
        self._poll_period = poll_period
        self._window = window_samples(average_window, poll_period)
        self._root = root
        self._clock = clock
        self._wall_clock = wall_clock
        self._limiter = ProblemLimiter(problem_interval)
        self._limiter_lock = threading.Lock()
        self._traffic = traffic
        # The node's cpu counters are read here, so the first sample (at start) is a rate too.
        self._node = NodeSampler(root=root, max_dmips=capacity.max_dmips, partitions=partitions,
                                 uplink_interfaces=uplink_interfaces, count_uplinks=traffic is None)
        self._lock = threading.Lock()
        self._node_average = MovingAverage(self._window)
        self._system: List[alerts.AlertProcessor] = []
        self._pending_rules: object = _NO_CHANGE  # Optional[AlertRules] once a config arrives
        self._instances: Dict[InstanceKey, _Watched] = {}
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # --- wiring ---------------------------------------------------------------------------

    def on_node_config(self, config: Optional[NodeConfig]) -> None:
        """NodeConfigService listener: runs under the service's lock, so it only records the new
        rules; the worker rebuilds the processors at its next poll."""
        with self._lock:
            self._pending_rules = config.alert_rules if config is not None else None

    def start(self) -> None:
        """Take the first sample now, then poll every period on the worker thread.

        The first sample is not left to the first period's end (35 s by default): CM may ask
        for AverageMonitoring right after registration, and an empty average answered node RAM
        0 and cpu 0 (issue 16). Its cpu covers the time since construction, or since boot when
        that is too short to measure (NodeSampler): nothing waits here, start-up stays fast."""
        if self._thread is not None:
            return
        self._poll()
        self._thread = threading.Thread(target=self._run, name="sm-monitor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        self._stopping.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # --- InstanceMonitorPort --------------------------------------------------------------

    def register_instance(self, instance: MonitoredInstance) -> None:
        dirs = resolve_cgroup_dirs(self._capacity.cgroups, instance.cgroup, self._root)
        sampler = InstanceSampler(dirs=dirs, cpus=len(self._capacity.cpus) or 1,
                                  max_dmips=self._capacity.max_dmips, partitions=instance.partitions,
                                  clock=self._clock)
        limits = alerts.Limits(self._capacity.max_dmips, self._capacity.total_ram, sampler.partition_sizes())
        rules, problems = alerts.monitoring_parameters_rules(instance.monitoring_parameters, limits)
        for problem in problems:
            self._report(f"instance {instance.key.item_id}/{instance.key.instance}: {problem}")
        watched = _Watched(instance, sampler, MovingAverage(self._window),
                           [alerts.AlertProcessor(rule) for rule in rules])
        with self._lock:
            self._instances[instance.key] = watched
        log.info("monitoring instance %s in cgroup %s", instance.key, instance.cgroup)

    def unregister_instance(self, key: InstanceKey) -> None:
        with self._lock:
            self._instances.pop(key, None)

    # --- MonitoringPort -------------------------------------------------------------------

    def average_monitoring(self) -> sm_pb2.AverageMonitoring:
        with self._lock:
            node = self._node_average.average()
            instances = [(w.instance, w.average.average()) for w in self._instances.values()]
        reply = sm_pb2.AverageMonitoring(
            node_monitoring=node.to_monitoring_data() if node else sm_pb2.MonitoringData(timestamp=now_timestamp())
        )
        for instance, average in instances:
            data = average.to_monitoring_data() if average else sm_pb2.MonitoringData(timestamp=now_timestamp())
            reply.instances_monitoring.append(sm_pb2.InstanceMonitoring(
                instance=instance.key.to_ident(), runtime_id=instance.runtime_id, monitoring_data=data))
        return reply

    # --- the poll -------------------------------------------------------------------------

    def _run(self) -> None:
        deadline = self._clock() + self._poll_period
        while not self._stopping.wait(max(0.0, deadline - self._clock())):
            # Fixed-rate: a slow poll shortens the next wait instead of shifting every later one.
            deadline = max(deadline + self._poll_period, self._clock())
            self._poll()

    def _poll(self) -> None:
        try:
            self.tick()
        except Exception as err:  # the monitor must outlive any one bad poll
            log.exception("monitoring poll failed")
            self._report(f"monitoring poll failed: {type(err).__name__}: {err}")

    def tick(self) -> None:
        """One poll: sample, send InstantMonitoring, feed averages and alert rules, send alerts."""
        now, stamp = self._clock(), self._wall_clock()
        self._apply_node_rules()
        node, problems = self._node.sample(stamp)
        reading = self._read_traffic(stamp, problems)
        if reading is not None:
            reported = reading.node_reported()
            node = dataclasses.replace(node, download=reported.download, upload=reported.upload)
        with self._lock:
            watched = list(self._instances.values())
        samples: List[Tuple[_Watched, Usage, Optional[InstanceTraffic]]] = []
        for entry in watched:
            usage, instance_problems = entry.sampler.sample(stamp)
            traffic = reading.instances.get(entry.instance.instance_id) if reading is not None else None
            if traffic is not None:
                usage = dataclasses.replace(usage, download=traffic.download, upload=traffic.upload)
            samples.append((entry, usage, traffic))
            key = entry.instance.key
            problems += [f"instance {key.item_id}/{key.instance}: {p}" for p in instance_problems]
        outgoing: List[Out] = [Out(instant_monitoring=sm_pb2.InstantMonitoring(
            node_monitoring=node.to_monitoring_data(),
            instances_monitoring=[
                sm_pb2.InstanceMonitoring(instance=entry.instance.key.to_ident(),
                                          runtime_id=entry.instance.runtime_id,
                                          monitoring_data=usage.to_monitoring_data())
                for entry, usage, _ in samples
            ],
        ))]
        with self._lock:
            self._node_average.add(node)
            for parameter, value, status in alerts.feed_all(self._system, node.values(), now):
                outgoing.append(_system_alert(parameter, value, status))
            for entry, usage, traffic in samples:
                if self._instances.get(entry.instance.key) is not entry:
                    continue  # unregistered during the poll
                entry.average.add(usage)
                statuses = alerts.feed_all(entry.processors, usage.values(), now)
                statuses += alerts.feed_all(entry.limit_rules(traffic), _limit_values(usage, traffic), now)
                for parameter, value, status in statuses:
                    outgoing.append(_instance_alert(entry.instance.key, parameter, value, status))
        for message in outgoing:
            self._sender.send(message)
        for problem in problems:
            self._report(problem)

    def _read_traffic(self, stamp: float, problems: List[str]) -> Optional[TrafficReading]:
        if self._traffic is None:
            return None
        try:
            return self._traffic.read(stamp)
        except (AosError, OSError) as err:
            # This poll reports no traffic (0) rather than the uplinks' private bytes.
            problems.append(f"traffic accounting unreadable: {err}")
            return TrafficReading(Bytes(), {})

    def _apply_node_rules(self) -> None:
        with self._lock:
            pending, self._pending_rules = self._pending_rules, _NO_CHANGE
        if pending is _NO_CHANGE:
            return
        assert pending is None or isinstance(pending, AlertRules)
        limits = alerts.Limits(self._capacity.max_dmips, self._capacity.total_ram, self._node.partition_sizes())
        rules, problems = alerts.node_config_rules(pending, limits)
        with self._lock:
            self._system, dropped = alerts.rebuild(self._system, rules)
        for processor in dropped:
            # The rule that raised it is gone: close the alert rather than leave CM with a raise.
            self._sender.send(_system_alert(processor.rule.parameter, 0, alerts.FALL))
        for problem in problems:
            self._report(f"node config: {problem}")
        log.info("system alert rules: %s", ", ".join(
            f"{r.parameter} {r.min_threshold}..{r.max_threshold} T={r.min_timeout:g}s" for r in rules) or "none")

    def _report(self, problem: str) -> None:
        with self._limiter_lock:
            report = self._limiter.should_report(problem, self._clock())
        if report:
            log.warning("monitoring: %s", problem)
            self._sender.send(core_alert(f"monitoring: {problem}"))


def _limit_values(usage: Usage, traffic: Optional[InstanceTraffic]) -> Dict[str, int]:
    """What the limit rules see: the period's bytes, or the limit itself once the kernel cuts
    that direction (the counted bytes then stop just below it)."""
    values = {"download": usage.download, "upload": usage.upload}
    if traffic is not None:
        if traffic.download_cut and traffic.download_limit is not None:
            values["download"] = max(values["download"], traffic.download_limit)
        if traffic.upload_cut and traffic.upload_limit is not None:
            values["upload"] = max(values["upload"], traffic.upload_limit)
    return values


def _system_alert(parameter: str, value: int, status: str) -> Out:
    return Out(alert=sm_pb2.Alert(
        timestamp=now_timestamp(),
        system_quota_alert=sm_pb2.SystemQuotaAlert(parameter=parameter, value=value, status=status),
    ))


def _instance_alert(key: InstanceKey, parameter: str, value: int, status: str) -> Out:
    return Out(alert=sm_pb2.Alert(
        timestamp=now_timestamp(),
        instance_quota_alert=sm_pb2.InstanceQuotaAlert(
            instance=key.to_ident(), parameter=parameter, value=value, status=status),
    ))

"""Monitoring with the network manager's traffic accounting behind the monitor's traffic port:
period bytes per instance and for the node (max of its own and its instances' sum), and the
InstanceQuotaAlert of a used-up downloadLimit/uploadLimit (NETWORK.md, PROTOCOL.md)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from aos_sm import hw
from aos_sm.agent.errors import RuntimeFailure
from aos_sm.agent.monitoring import Monitor
from aos_sm.agent.monitoring.monitor import LIMIT_ALERT_REPEAT
from aos_sm.agent.network.traffic import InstanceTraffic, TrafficReading
from aos_sm.agent.network.traffic_period import Bytes
from aos_sm.agent.ports import InstanceKey, MonitoredInstance
from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

BOARDS = Path(__file__).resolve().parents[1] / "data" / "boards"
KEY = InstanceKey("item", "subject", 0)


class FakeTraffic:
    """The traffic port as a settable reading; ``fail`` makes the next reads raise."""

    def __init__(self) -> None:
        self.reading = TrafficReading(Bytes(), {})
        self.reads: List[float] = []
        self.fail = False

    def read(self, now: float) -> TrafficReading:
        self.reads.append(now)
        if self.fail:
            raise RuntimeFailure("nftables: table gone")
        return self.reading


class Recorder:
    def __init__(self) -> None:
        self.sent: List[sm_pb2.SMOutgoingMessages] = []

    def send(self, message: sm_pb2.SMOutgoingMessages) -> None:
        self.sent.append(message)

    def take(self) -> List[sm_pb2.SMOutgoingMessages]:
        sent, self.sent = self.sent, []
        return sent


def quota_alerts(messages: List[sm_pb2.SMOutgoingMessages]) -> List[Tuple[str, int, str]]:
    return [(m.alert.instance_quota_alert.parameter, m.alert.instance_quota_alert.value,
             m.alert.instance_quota_alert.status)
            for m in messages if m.HasField("alert") and m.alert.HasField("instance_quota_alert")]


def instant(messages: List[sm_pb2.SMOutgoingMessages]) -> sm_pb2.InstantMonitoring:
    (message,) = [m for m in messages if m.HasField("instant_monitoring")]
    return message.instant_monitoring


Setup = Tuple[Monitor, "FakeTraffic", "Recorder", List[float]]


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    root = tmp_path / "rpi4"
    shutil.copytree(BOARDS / "rpi4", root)
    traffic, sender, now = FakeTraffic(), Recorder(), [1000.0]
    monitor = Monitor(sender=sender, capacity=hw.probe_node(root), poll_period=1.0, average_window=2.0,
                      partitions=[], root=root, clock=lambda: now[0], wall_clock=lambda: 1.7e9 + now[0],
                      traffic=traffic)
    return monitor, traffic, sender, now


def register(monitor: Monitor, parameters: sm_pb2.MonitoringParameters = sm_pb2.MonitoringParameters(),
             instance_id: str = "c-1") -> None:
    monitor.register_instance(MonitoredInstance(KEY, "runc-id", "aos-sm/c-1", parameters, instance_id=instance_id))


def reading(node: Bytes, instances: Dict[str, InstanceTraffic]) -> TrafficReading:
    return TrafficReading(node, instances)


def test_the_node_reports_the_larger_of_its_counters_and_its_instances_sum(setup: Setup) -> None:
    monitor, traffic, sender, now = setup
    register(monitor)
    traffic.reading = reading(Bytes(5000, 100), {"c-1": InstanceTraffic(3000, 700), "c-2": InstanceTraffic(1000, 50)})
    monitor.tick()
    data = instant(sender.take())
    assert (data.node_monitoring.download, data.node_monitoring.upload) == (5000, 750)
    (instance,) = data.instances_monitoring
    assert (instance.monitoring_data.download, instance.monitoring_data.upload) == (3000, 700)
    assert traffic.reads == [1.7e9 + now[0]]  # the wall clock: the period is the UTC day
    average = monitor.average_monitoring()
    assert average.instances_monitoring[0].monitoring_data.download == 3000


def test_an_instance_the_network_manager_does_not_count_reports_zero(setup: Setup) -> None:
    monitor, traffic, sender, _ = setup
    register(monitor, instance_id="")
    traffic.reading = reading(Bytes(10, 10), {"c-1": InstanceTraffic(3000, 700)})
    monitor.tick()
    (instance,) = instant(sender.take()).instances_monitoring
    assert (instance.monitoring_data.download, instance.monitoring_data.upload) == (0, 0)


def test_a_used_up_limit_raises_repeats_rarely_and_falls_when_the_day_rolls(setup: Setup) -> None:
    monitor, traffic, sender, now = setup
    register(monitor)
    limit = 1_000_000
    traffic.reading = reading(Bytes(), {"c-1": InstanceTraffic(0, 900_000, None, limit)})
    monitor.tick()
    assert quota_alerts(sender.take()) == []
    # The kernel cut the direction just below the limit: the alert says the limit is used up.
    traffic.reading = reading(Bytes(), {"c-1": InstanceTraffic(0, 998_600, None, limit, upload_cut=True)})
    now[0] += 1
    monitor.tick()
    assert quota_alerts(sender.take()) == [("upload", limit, "raise")]
    for _ in range(5):
        now[0] += 1
        monitor.tick()
        assert quota_alerts(sender.take()) == []
    now[0] += LIMIT_ALERT_REPEAT
    monitor.tick()
    assert quota_alerts(sender.take()) == [("upload", limit, "continue")]
    # A new day: the counter restarts and the cut ends; fall after two samples below.
    traffic.reading = reading(Bytes(), {"c-1": InstanceTraffic(0, 0, None, limit)})
    now[0] += 1
    monitor.tick()
    now[0] += 1
    monitor.tick()
    assert quota_alerts(sender.take()) == [("upload", 0, "fall")]


def test_a_rule_from_cm_for_that_parameter_replaces_the_limit_rule(setup: Setup) -> None:
    monitor, traffic, sender, now = setup
    register(monitor, sm_pb2.MonitoringParameters(alert_rules=sm_pb2.AlertRules(
        download=sm_pb2.AlertRulePoints(min_threshold=10, max_threshold=20))))
    traffic.reading = reading(Bytes(), {"c-1": InstanceTraffic(500, 0, 400, None, download_cut=True)})
    monitor.tick()
    assert quota_alerts(sender.take()) == [("download", 500, "raise")]  # CM's rule, once


def test_an_unreadable_accounting_reports_zero_and_a_core_alert(setup: Setup) -> None:
    monitor, traffic, sender, _ = setup
    traffic.fail = True
    monitor.tick()
    sent = sender.take()
    data = instant(sent)
    assert (data.node_monitoring.download, data.node_monitoring.upload) == (0, 0)
    assert any("traffic accounting unreadable: nftables: table gone" in m.alert.core_alert.message
               for m in sent if m.HasField("alert"))

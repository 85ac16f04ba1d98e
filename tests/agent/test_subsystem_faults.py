"""Faults of the agent itself reach CM as CoreAlerts (component ``SM``), rate-limited where they
would otherwise repeat every poll, and every request with a reply still gets one."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, List

from aos_sm import hw
from aos_sm.agent.cloud import CloudConnection
from aos_sm.agent.dispatch import Dispatcher
from aos_sm.agent.monitoring import Monitor
from aos_sm.agent.unsupported import UnsupportedNetwork
from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

BOARDS = Path(__file__).resolve().parents[1] / "data" / "boards"


class Recorder:
    """The Sender port as a list (what a live Outbox would write to the stream)."""

    def __init__(self) -> None:
        self.sent: List[sm_pb2.SMOutgoingMessages] = []

    def send(self, message: sm_pb2.SMOutgoingMessages) -> None:
        self.sent.append(message)

    def kinds(self) -> List[str]:
        return [str(m.WhichOneof("SMOutgoingMessage")) for m in self.sent]

    def core_alerts(self) -> List[str]:
        return [m.alert.core_alert.message for m in self.sent
                if m.WhichOneof("SMOutgoingMessage") == "alert" and m.alert.HasField("core_alert")]


class _IdleLauncher:
    """A launcher with no instances; this test is about the other handlers."""

    def update_instances(self, request: sm_pb2.UpdateInstances) -> None:
        pass

    def node_instances_status(self) -> sm_pb2.NodeInstancesStatus:
        return sm_pb2.NodeInstancesStatus()


class BrokenNodeConfig:
    def status(self) -> sm_pb2.NodeConfigStatus:
        return sm_pb2.NodeConfigStatus(state="installed")

    def check(self, node_config: str, version: str) -> sm_pb2.NodeConfigStatus:
        raise RuntimeError("disk on fire")

    def set(self, node_config: str, version: str) -> sm_pb2.NodeConfigStatus:
        raise RuntimeError("disk on fire")


class BrokenLogs:
    def __init__(self, sender: Recorder) -> None:
        self._sender = sender

    def system_log(self, request: sm_pb2.SystemLogRequest) -> None:
        raise OSError(5, "I/O error")

    def instance_log(self, request: sm_pb2.InstanceLogRequest) -> None:
        raise OSError(5, "I/O error")

    def crash_log(self, request: sm_pb2.InstanceCrashLogRequest) -> None:
        raise OSError(5, "I/O error")


def test_a_raising_handler_replies_with_its_error_and_raises_a_core_alert() -> None:
    sender = Recorder()
    dispatcher = Dispatcher(sender=sender, node_config=BrokenNodeConfig(), launcher=_IdleLauncher(),
                            logs=BrokenLogs(sender), monitoring=_NoMonitoring(), network=UnsupportedNetwork(sender),
                            cloud=CloudConnection())
    dispatcher.handle(sm_pb2.SMIncomingMessages(set_node_config=sm_pb2.SetNodeConfig(node_config="{}", version="2.0.0")))
    dispatcher.handle(sm_pb2.SMIncomingMessages(system_log_request=sm_pb2.SystemLogRequest(correlation_id="c1")))
    assert sender.kinds() == ["alert", "node_config_status", "alert", "log"]
    status = sender.sent[1].node_config_status
    assert (status.state, status.version, status.error.aos_code != 0) == ("installed", "2.0.0", True)
    assert "disk on fire" in status.error.message
    log = sender.sent[3].log
    assert (log.correlation_id, log.status) == ("c1", "error")
    alerts = sender.core_alerts()
    assert "node config handler failed: disk on fire" in alerts[0] and "log request c1 failed" in alerts[1]
    assert all(m.alert.core_alert.core_component == "SM" for m in sender.sent if m.HasField("alert"))


class _NoMonitoring:
    def average_monitoring(self) -> sm_pb2.AverageMonitoring:
        return sm_pb2.AverageMonitoring()


def test_an_unreadable_counter_is_one_core_alert_per_interval_not_one_per_poll(tmp_path: Path) -> None:
    root = tmp_path / "rpi4"
    shutil.copytree(BOARDS / "rpi4", root)
    capacity = hw.probe_node(root)
    sender = Recorder()
    now = [1000.0]
    monitor = Monitor(sender=sender, capacity=capacity, poll_period=1.0, average_window=10.0,
                      partitions=[("workingDir", tmp_path)], root=root, clock=lambda: now[0],
                      problem_interval=60.0)
    (root / "proc/stat").unlink(missing_ok=True)
    for _ in range(5):
        monitor.tick()
        now[0] += 1.0
    assert sender.kinds().count("instant_monitoring") == 5
    stat_alerts = [a for a in sender.core_alerts() if "/proc/stat" in a]
    assert len(stat_alerts) == 1
    now[0] += 60.0
    monitor.tick()
    assert len([a for a in sender.core_alerts() if "/proc/stat" in a]) == 2
    average: Any = monitor.average_monitoring()
    assert average.node_monitoring.ram == hw.used_ram(root) > 0


def test_an_unreadable_stored_node_config_is_a_core_alert_after_registration(
    contract_cm: Any, start_agent: Any, tmp_path: Path
) -> None:
    from agent_helpers import registered

    stored = tmp_path / "aos_node.cfg"
    stored.write_bytes(b"\x00not a stored node config")
    start_agent(contract_cm.address, nodeConfigFile=str(stored))
    session = registered(contract_cm)
    alert = session.wait_for("alert", timeout=5, predicate=lambda a: "stored node config" in a.core_alert.message)
    assert alert.core_alert.core_component == "SM"

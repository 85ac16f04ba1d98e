"""The first sample is taken at start (issue 16): AverageMonitoring asked right after registration
has the node's RAM and a cpu rate, not the zeros of an empty average.

A board fixture root whose /proc/stat the test moves forward between the monitor's construction
(the cpu baseline) and its start. Nothing waits: a span too short to measure gives the share
since boot."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import List

from aos_sm import hw
from aos_sm.agent.monitoring import Monitor
from aos_sm.agent.monitoring.samplers import MIN_CPU_TICKS
from aos_sm.hw.memory import used_ram
from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

BOARDS = Path(__file__).resolve().parents[1] / "data" / "boards"


def proc_stat(user: int, idle: int) -> str:
    # user nice system idle iowait irq softirq steal guest guest_nice
    return f"cpu  {user} 0 0 {idle} 0 0 0 0 0 0\n"


class Recorder:
    def __init__(self) -> None:
        self.sent: List[sm_pb2.SMOutgoingMessages] = []

    def send(self, message: sm_pb2.SMOutgoingMessages) -> None:
        self.sent.append(message)


def test_start_takes_the_first_sample_with_a_cpu_rate_since_construction(tmp_path: Path) -> None:
    root = tmp_path / "rpi4"
    shutil.copytree(BOARDS / "rpi4", root)
    (root / "proc" / "stat").write_text(proc_stat(user=1000, idle=9000))
    capacity = hw.probe_node(root)
    sender, now = Recorder(), [100.0]
    monitor = Monitor(sender=sender, capacity=capacity, poll_period=35.0, average_window=35.0, partitions=[],
                      uplink_interfaces=[], root=root, clock=lambda: now[0], wall_clock=lambda: 1.7e9 + now[0])
    assert not monitor.average_monitoring().node_monitoring.ram  # nothing sampled yet

    (root / "proc" / "stat").write_text(proc_stat(user=1000 + 25, idle=9000 + 75))  # 25 % busy since
    monitor.start()
    try:
        node = monitor.average_monitoring().node_monitoring
        assert node.ram == used_ram(root) > 0
        assert node.cpu == round(0.25 * capacity.max_dmips)
        # The same sample went out as the first InstantMonitoring (the outbox keeps it for CM).
        (first,) = [m.instant_monitoring for m in sender.sent if m.HasField("instant_monitoring")]
        assert (first.node_monitoring.ram, first.node_monitoring.cpu) == (node.ram, node.cpu)
    finally:
        assert monitor.stop(timeout=5.0)


def test_a_span_too_short_to_measure_gives_the_cpu_share_since_boot(tmp_path: Path) -> None:
    root = tmp_path / "rpi4"
    shutil.copytree(BOARDS / "rpi4", root)
    (root / "proc" / "stat").write_text(proc_stat(user=1000, idle=9000))  # 10 % busy since boot
    capacity = hw.probe_node(root)
    monitor = Monitor(sender=Recorder(), capacity=capacity, poll_period=35.0, average_window=35.0, partitions=[],
                      uplink_interfaces=[], root=root, clock=lambda: 100.0, wall_clock=lambda: 1.7e9)
    # Fewer ticks than a rate needs, all of them busy: read as a rate, this would be 100 %.
    (root / "proc" / "stat").write_text(proc_stat(user=1000 + MIN_CPU_TICKS - 1, idle=9000))
    monitor.start()
    try:
        node = monitor.average_monitoring().node_monitoring
        assert node.cpu == round((1000 + MIN_CPU_TICKS - 1) / (10000 + MIN_CPU_TICKS - 1) * capacity.max_dmips)
    finally:
        assert monitor.stop(timeout=5.0)

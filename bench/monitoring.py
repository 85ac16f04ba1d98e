"""The monitor's own CPU use at a 1 s poll: with no instances, then with N registered instances
in real cgroups (one idle process each), side by side, as a share of one core.

    python bench/monitoring.py [--seconds 20] [--instances 50] [--poll 1]

The monitor runs in this process on its own thread with a sender that only counts messages, so
the process's CPU time over the run (children excluded) is what monitoring costs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import List, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "agent"))

from cgroup_helpers import IDLE, InstanceCgroup, cgroup_dirs_or_skip_reason, remove_parent  # noqa: E402

from aos_sm.agent.capacity import probe_capacity  # noqa: E402
from aos_sm.agent.config import parse_config  # noqa: E402
from aos_sm.agent.monitoring import Monitor  # noqa: E402
from aos_sm.agent.ports import InstanceKey, MonitoredInstance  # noqa: E402
from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2  # noqa: E402


class CountingSender:
    def __init__(self) -> None:
        self.count = 0

    def send(self, message: sm_pb2.SMOutgoingMessages) -> None:
        message.SerializeToString()  # what the stream would do with it
        self.count += 1


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(monitor: Monitor, sender: CountingSender, seconds: float) -> Tuple[float, int]:
    """Share of one core used by this process over ``seconds``, and InstantMonitoring sent."""
    sent_before, cpu_before, started = sender.count, cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds() - cpu_before) / (time.monotonic() - started), sender.count - sent_before


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--instances", type=int, default=50)
    parser.add_argument("--poll", type=float, default=1.0)
    args = parser.parse_args()

    config = parse_config(json.dumps({"nodeId": "bench", "workingDir": "/tmp"}))
    capacity = probe_capacity(config)
    sender = CountingSender()
    monitor = Monitor(sender=sender, capacity=capacity, poll_period=args.poll, average_window=35.0,
                      partitions=config.monitoring_partitions)
    monitor.start()
    baseline, polls = measure(monitor, sender, args.seconds)
    print(f"{'what':<44}{'share of one core':>20}{'messages':>10}")
    print(f"{'monitor, 0 instances, poll ' + format(args.poll, 'g') + ' s':<44}{baseline:>20.4f}{polls:>10}")

    hierarchies, reason = cgroup_dirs_or_skip_reason()
    if reason:
        monitor.stop()
        print(f"{args.instances} instances: not measured because {reason}")
        print("ratio N/0: n/a")
        return 0
    parent = f"aos-sm-bench-{os.getpid()}"
    cgroups: List[InstanceCgroup] = []
    try:
        for number in range(args.instances):
            cgroup = InstanceCgroup(hierarchies, parent, f"i{number}")
            cgroups.append(cgroup)
            cgroup.run(IDLE.format(mib=1))
            monitor.register_instance(MonitoredInstance(
                key=InstanceKey("bench", "s", number), runtime_id="runc", cgroup=cgroup.relative,
                monitoring_parameters=sm_pb2.MonitoringParameters()))
        loaded, polls = measure(monitor, sender, args.seconds)
    finally:
        monitor.stop()
        for cgroup in cgroups:
            cgroup.remove()
        remove_parent(hierarchies, parent)
    label = f"monitor, {args.instances} instances, poll {args.poll:g} s"
    print(f"{label:<44}{loaded:>20.4f}{polls:>10}")
    ratio = loaded / baseline if baseline > 0 else float("inf")
    print(f"ratio N/0: {ratio:.2f} ({args.instances} instances cost {1000 * (loaded - baseline) / max(1, args.instances):.3f}"
          f" ms of CPU per instance per second)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

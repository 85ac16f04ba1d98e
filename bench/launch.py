"""Time from UpdateInstances to every instance's process running (the runner's own
``ProcessRunning`` event) for 1 and 20 instances of a cached image, against sequential
``runc run -d`` of the very same bundles, side by side in the same run. The launcher starts a
batch's instances in parallel (a bounded pool), so 20 must beat the sequential baseline. The time
to the batch's NodeInstancesStatus (every instance confirmed ``active``, after the start window
of 1.2 x startInterval; the image sets startInterval 1 s) is printed separately.

    sudo python bench/launch.py [--counts 1 20] [--rounds 3]

Needs root, runc and Debian's busybox-static (the image is built from it, as in the tests).
Every container and cgroup it creates is removed at the end (names start with aos-sm-bench-).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Dict, List, Set, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "launcher"))

from oci_fixture import busybox_layer, build_image, remove_cgroups, static_busybox, system_test_problem  # noqa: E402

from aos_sm.agent.launcher import Launcher, NullMonitor  # noqa: E402
from aos_sm.agent.launcher import container_id  # noqa: E402
from aos_sm.agent.launcher.lifecycle import Phase  # noqa: E402
from aos_sm.agent.ports import InstanceKey  # noqa: E402
from aos_sm.agent.sminfo import runtime_id  # noqa: E402
from aos_sm.proto.common.v2 import common_pb2  # noqa: E402
from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2  # noqa: E402

NODE = "bench-node"
RUNC_ID = runtime_id("runc", NODE)
SERVICE = ["/bin/sh", "-c", "trap 'exit 0' TERM; sleep 1000 & wait"]
ITEM_CONFIG = {"runParameters": {"startInterval": "1s"}}


class BatchWaiter:
    """A Sender that signals when a batch's NodeInstancesStatus arrives."""

    def __init__(self) -> None:
        self.done = threading.Event()

    def send(self, message: sm_pb2.SMOutgoingMessages) -> None:
        if message.WhichOneof("SMOutgoingMessage") == "node_instances_status":
            self.done.set()


class RunningWaiter:
    """A launcher observer that signals when every awaited instance's process runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.awaited: Set[InstanceKey] = set()
        self.all_running = threading.Event()

    def expect(self, keys: Set[InstanceKey]) -> None:
        with self._lock:
            self.awaited = set(keys)
            self.all_running.clear()

    def __call__(self, key: InstanceKey, phase: Phase) -> None:
        if phase is not Phase.Confirming:
            return
        with self._lock:
            self.awaited.discard(key)
            if not self.awaited:
                self.all_running.set()


def infos(digest: str, count: int, round_number: int) -> List[sm_pb2.InstanceInfo]:
    return [sm_pb2.InstanceInfo(
        instance=common_pb2.InstanceIdent(item_id=f"bench-{round_number}-{i}", subject_id="s", instance=0),
        version="1.0.0", manifest_digest=digest, runtime_id=RUNC_ID) for i in range(count)]


def launcher_round(launcher: Launcher, sender: BatchWaiter, running: RunningWaiter, digest: str, count: int,
                   round_number: int) -> Tuple[float, float]:
    """(seconds to every process running, seconds to the batch's NodeInstancesStatus)."""
    started = infos(digest, count, round_number)
    running.expect({InstanceKey.from_ident(info.instance) for info in started})
    sender.done.clear()
    began = time.perf_counter()
    launcher.update_instances(sm_pb2.UpdateInstances(start_instances=started))
    if not running.all_running.wait(120):
        raise RuntimeError("not every process started")
    to_running = time.perf_counter() - began
    if not sender.done.wait(120):
        raise RuntimeError("the batch did not finish")
    to_active = time.perf_counter() - began
    states = [s.state for s in launcher.node_instances_status().instances]
    if states.count("active") != count:
        raise RuntimeError(f"not all active: {states}")
    return to_running, to_active


def direct_round(bundles: List[Path], root: Path, prefix: str, parent: str) -> float:
    """runc run -d of copies of the launcher's bundles, with their own ids and cgroups."""
    copies = []
    for index, bundle in enumerate(bundles):
        copy = root / "bundles" / f"{prefix}-{index}"
        copy.mkdir(parents=True)
        spec = json.loads((bundle / "config.json").read_text())
        spec["linux"]["cgroupsPath"] = f"/{parent}/{prefix}-{index}"
        (copy / "config.json").write_text(json.dumps(spec))
        copies.append(copy)
    began = time.perf_counter()
    for index, copy in enumerate(copies):
        subprocess.run(["runc", "--root", str(root / "state"), "run", "-d", "--bundle", str(copy),
                        f"{prefix}-{index}"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=True)
    elapsed = time.perf_counter() - began
    for index in range(len(copies)):
        subprocess.run(["runc", "--root", str(root / "state"), "delete", "--force", f"{prefix}-{index}"],
                       capture_output=True, check=False)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 20])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    problem = system_test_problem()
    if problem is not None:
        print(f"bench/launch.py cannot run here: {problem}", file=sys.stderr)
        return 2
    busybox = static_busybox()
    assert busybox is not None
    parent = f"aos-sm-bench-{uuid.uuid4().hex[:8]}"
    work = Path(tempfile.mkdtemp(prefix="aos-sm-bench-"))
    image = build_image([busybox_layer(busybox)], entrypoint=SERVICE[:2], cmd=SERVICE[2:], item_config=ITEM_CONFIG)
    served = work / "served"
    served.mkdir()
    urls: Dict[str, str] = {}
    for digest, blob in image.blobs.items():
        (served / digest.split(":")[1]).write_bytes(blob)
        urls[digest] = (served / digest.split(":")[1]).as_uri()
    sender = BatchWaiter()
    running = RunningWaiter()
    launcher = Launcher(sender=sender, working_dir=work / "agent", runtimes={RUNC_ID: ("runc", "runc")},
                        resolver=lambda digests: [urls[d] for d in digests], monitor=NullMonitor(),
                        cgroup_parent=parent, stop_timeout=5.0, observer=running)
    launcher.start()
    results: Dict[int, List[Tuple[float, float, float]]] = {}
    try:
        launcher_round(launcher, sender, running, image.manifest_digest, 1, -1)  # warm-up: the image is cached now
        launcher.stop_all_instances()
        for count in args.counts:
            for round_number in range(args.rounds):
                to_running, to_active = launcher_round(launcher, sender, running, image.manifest_digest, count,
                                                       round_number)
                bundles = [work / "agent" / "launcher" / "bundles" / container_id(parent, log.key)
                           for log in launcher.instance_logs()]
                direct_seconds = direct_round(bundles, work / "direct", f"{parent}-d{count}-{round_number}", parent)
                launcher.stop_all_instances()
                results.setdefault(count, []).append((to_running, direct_seconds, to_active))
    finally:
        launcher.stop_all_instances()
        launcher.stop()
        remove_cgroups(parent)
        # The instances' roots live on a tmpfs the launcher keeps for the agent's life.
        subprocess.run(["umount", "-l", str(work / "agent" / "launcher" / "rootfs")], capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'instances':>9} | {'runc run -d':>12} | {'aos-sm':>12} | ratio aos-sm/runc | "
          f"{'active':>9} (start window 1.2 s)")
    for count, rows in results.items():
        agent = statistics.median(row[0] for row in rows)
        direct = statistics.median(row[1] for row in rows)
        active = statistics.median(row[2] for row in rows)
        print(f"{count:>9} | {direct * 1000:>9.0f} ms | {agent * 1000:>9.0f} ms | {agent / direct:17.2f} | "
              f"{active * 1000:>6.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())

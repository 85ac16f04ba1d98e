"""Time from UpdateInstances to ``active`` for 1 and 20 instances of a cached image, against
``runc run -d`` of the very same bundles run directly, side by side in the same run.

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
from typing import Dict, List

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "launcher"))

from oci_fixture import busybox_layer, build_image, remove_cgroups, static_busybox, system_test_problem  # noqa: E402

from aos_sm.agent.launcher import Launcher, NullMonitor  # noqa: E402
from aos_sm.agent.launcher import container_id  # noqa: E402
from aos_sm.agent.sminfo import runtime_id  # noqa: E402
from aos_sm.proto.common.v2 import common_pb2  # noqa: E402
from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2  # noqa: E402

NODE = "bench-node"
RUNC_ID = runtime_id("runc", NODE)
SERVICE = ["/bin/sh", "-c", "trap 'exit 0' TERM; sleep 1000 & wait"]


class BatchWaiter:
    """A Sender that signals when a batch's NodeInstancesStatus arrives."""

    def __init__(self) -> None:
        self.done = threading.Event()

    def send(self, message: sm_pb2.SMOutgoingMessages) -> None:
        if message.WhichOneof("SMOutgoingMessage") == "node_instances_status":
            self.done.set()


def infos(digest: str, count: int, round_number: int) -> List[sm_pb2.InstanceInfo]:
    return [sm_pb2.InstanceInfo(
        instance=common_pb2.InstanceIdent(item_id=f"bench-{round_number}-{i}", subject_id="s", instance=0),
        version="1.0.0", manifest_digest=digest, runtime_id=RUNC_ID) for i in range(count)]


def launcher_round(launcher: Launcher, sender: BatchWaiter, digest: str, count: int, round_number: int) -> float:
    started = infos(digest, count, round_number)
    sender.done.clear()
    began = time.perf_counter()
    launcher.update_instances(sm_pb2.UpdateInstances(start_instances=started))
    if not sender.done.wait(120):
        raise RuntimeError("the batch did not finish")
    elapsed = time.perf_counter() - began
    states = [s.state for s in launcher.node_instances_status().instances]
    if states.count("active") != count:
        raise RuntimeError(f"not all active: {states}")
    return elapsed


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
    image = build_image([busybox_layer(busybox)], entrypoint=SERVICE[:2], cmd=SERVICE[2:])
    served = work / "served"
    served.mkdir()
    urls: Dict[str, str] = {}
    for digest, blob in image.blobs.items():
        (served / digest.split(":")[1]).write_bytes(blob)
        urls[digest] = (served / digest.split(":")[1]).as_uri()
    sender = BatchWaiter()
    launcher = Launcher(sender=sender, working_dir=work / "agent", runtimes={RUNC_ID: ("runc", "runc")},
                        resolver=lambda digests: [urls[d] for d in digests], monitor=NullMonitor(),
                        cgroup_parent=parent, stop_timeout=5.0)
    launcher.start()
    results: Dict[int, List[tuple]] = {}
    try:
        launcher_round(launcher, sender, image.manifest_digest, 1, -1)  # warm-up: the image is cached now
        launcher.stop_all_instances()
        for count in args.counts:
            for round_number in range(args.rounds):
                agent_seconds = launcher_round(launcher, sender, image.manifest_digest, count, round_number)
                bundles = [work / "agent" / "launcher" / "bundles" / container_id(parent, log.key)
                           for log in launcher.instance_logs()]
                direct_seconds = direct_round(bundles, work / "direct", f"{parent}-d{count}-{round_number}", parent)
                launcher.stop_all_instances()
                results.setdefault(count, []).append((agent_seconds, direct_seconds))
    finally:
        launcher.stop_all_instances()
        launcher.stop()
        remove_cgroups(parent)
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'instances':>9} | {'runc run -d':>12} | {'aos-sm':>12} | ratio aos-sm/runc")
    for count, pairs in results.items():
        agent = statistics.median(p[0] for p in pairs)
        direct = statistics.median(p[1] for p in pairs)
        print(f"{count:>9} | {direct * 1000:>9.0f} ms | {agent * 1000:>9.0f} ms | {agent / direct:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

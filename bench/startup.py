"""Time from process start to SMInfo on the wire, and RSS once registered, against a bare
grpcio client process (bench/bare_client.py) measured the same way in the same run; the agent
with its network manager disabled (``network.enabled`` false) and active, side by side.

    python bench/startup.py [--rounds 5]

As root the whole bench (CM, clients, agents) runs in a network namespace it makes, so the active
network manager changes nothing of the machine's own network; without root only the disabled
agent is measured.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from aos_sm.agent.cmsim import SimulatedCM

HERE = Path(__file__).resolve().parent


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def measure(command: List[str], cm: SimulatedCM, index: int, stop: str) -> Tuple[float, int]:
    """Seconds from spawn to SMInfo at CM, and RSS (KiB) once NodeInstancesStatus arrived."""
    arrived = threading.Event()
    started = time.perf_counter()
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        session = cm.wait_session(index, 60.0)
        if session is None or session.wait_for("sm_info", 60.0) is None:
            raise RuntimeError(f"{command[1:3]} did not register")
        elapsed = time.perf_counter() - started
        arrived.set()
        session.wait_for("node_instances_status", 10.0)
        time.sleep(0.5)  # let start-up work (threads, probes) settle before reading RSS
        rss = rss_kib(process.pid)
    finally:
        if stop == "stdin":
            assert process.stdin is not None
            process.stdin.close()
        else:
            process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)
    return elapsed, rss


def enter_namespace() -> Optional[str]:
    """Move this (still single-threaded) process into a fresh network namespace; its name."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return None
    name = f"bstart{uuid.uuid4().hex[:6]}"
    if subprocess.run(["ip", "netns", "add", name], capture_output=True, check=False).returncode != 0:
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    with open(f"/run/netns/{name}") as handle:
        if libc.setns(handle.fileno(), 0x40000000) != 0:  # CLONE_NEWNET
            subprocess.run(["ip", "netns", "delete", name], check=False)
            return None
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    return name


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    # Compiled modules as a board has them installed: without .pyc files every start would also
    # compile the sources (this sandbox sets PYTHONDONTWRITEBYTECODE); a first, uncounted round
    # writes them.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    namespace = enter_namespace()
    cm = SimulatedCM().start()
    variants = ["disabled"] + (["active"] if namespace is not None else [])
    times: Dict[str, List[float]] = {name: [] for name in ["bare"] + variants}
    rss: Dict[str, List[int]] = {name: [] for name in ["bare"] + variants}
    sessions = 0
    try:
        with tempfile.TemporaryDirectory() as workdir:
            commands = {"bare": ([sys.executable, str(HERE / "bare_client.py"), cm.address], "stdin")}
            for variant in variants:
                config = Path(workdir) / f"sm-{variant}.json"
                config.write_text(json.dumps({
                    "nodeId": "bench", "cmServerURL": cm.address, "tlsMode": "plaintext",
                    "workingDir": str(Path(workdir) / variant), "resourcesConfigFile": str(Path(workdir) / "none.cfg"),
                    "network": {"enabled": variant == "active"},
                }))
                commands[variant] = ([sys.executable, "-m", "aos_sm.agent.cli", "--log-level", "error", "run",
                                      "--config", str(config)], "sigterm")
            for round_number in range(args.rounds + 1):
                for name, (command, stop) in commands.items():
                    sessions += 1
                    elapsed, kib = measure(command, cm, sessions, stop)
                    if round_number > 0:
                        times[name].append(elapsed)
                        rss[name].append(kib)
    finally:
        cm.stop(0)
        if namespace is not None:
            subprocess.run(["ip", "netns", "delete", namespace], check=False)
    bt, br = statistics.median(times["bare"]), statistics.median(rss["bare"])
    dt, dr = statistics.median(times["disabled"]), statistics.median(rss["disabled"])
    print(f"process start -> SMInfo on the wire (median of {args.rounds}): "
          f"bare grpcio {bt * 1000:.0f} ms, aos-sm {dt * 1000:.0f} ms, ratio {dt / bt:.2f}")
    print(f"RSS once registered: bare grpcio {br / 1024:.1f} MiB, aos-sm {dr / 1024:.1f} MiB, "
          f"ratio {dr / br:.2f}")
    if "active" in times:
        at, ar = statistics.median(times["active"]), statistics.median(rss["active"])
        print(f"network manager disabled -> active: start {dt * 1000:.0f} -> {at * 1000:.0f} ms "
              f"({(at - dt) * 1000:+.0f} ms), RSS {dr / 1024:.1f} -> {ar / 1024:.1f} MiB "
              f"({(ar - dr) / 1024:+.1f} MiB), ratio {at / dt:.2f} / {ar / dr:.2f}")
    else:
        print("network manager active: not measured (needs root for a network namespace)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Time from process start to SMInfo on the wire, and RSS once registered, against a bare
grpcio client process (bench/bare_client.py) measured the same way in the same run.

    python bench/startup.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import List, Tuple

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    cm = SimulatedCM().start()
    bare_times, agent_times, bare_rss, agent_rss = [], [], [], []
    sessions = 0
    with tempfile.TemporaryDirectory() as workdir:
        config = Path(workdir) / "sm.json"
        config.write_text(json.dumps({
            "nodeId": "bench", "cmServerURL": cm.address, "tlsMode": "plaintext", "workingDir": workdir,
            "resourcesConfigFile": str(Path(workdir) / "none.cfg"),
        }))
        agent_cmd = [sys.executable, "-m", "aos_sm.agent.cli", "--log-level", "error", "run", "--config", str(config)]
        bare_cmd = [sys.executable, str(HERE / "bare_client.py"), cm.address]
        for _ in range(args.rounds):
            sessions += 1
            elapsed, rss = measure(bare_cmd, cm, sessions, "stdin")
            bare_times.append(elapsed)
            bare_rss.append(rss)
            sessions += 1
            elapsed, rss = measure(agent_cmd, cm, sessions, "sigterm")
            agent_times.append(elapsed)
            agent_rss.append(rss)
    cm.stop(0)
    bt, at = statistics.median(bare_times), statistics.median(agent_times)
    br, ar = statistics.median(bare_rss), statistics.median(agent_rss)
    print(f"process start -> SMInfo on the wire (median of {args.rounds}): "
          f"bare grpcio {bt * 1000:.0f} ms, aos-sm {at * 1000:.0f} ms, ratio {at / bt:.2f}")
    print(f"RSS once registered: bare grpcio {br / 1024:.1f} MiB, aos-sm {ar / 1024:.1f} MiB, "
          f"ratio {ar / br:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

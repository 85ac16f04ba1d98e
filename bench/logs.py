"""Stream a generated syslog file through the agent's log service and compare its throughput
with `gzip -6` on the same file in the same run; report the agent's peak RSS against the same
process idle (imports and service built, no request).

    python bench/logs.py [--size-mb 200] [--part-size 262144]

The agent side runs in a child process (this script with --child) so its ru_maxrss is its own.
Its throughput counts both of its passes over the file (chunker.py: count, then compress).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Dict

WORDS = ("kernel", "eth0", "link", "up", "down", "dhcp", "lease", "renewed", "aos", "service", "started",
         "stopped", "warning", "error", "retry", "timeout", "connection", "closed", "mount", "ok")


def generate(path: Path, size: int) -> int:
    """A syslog file of about ``size`` bytes over one day, busybox format; returns its line count."""
    rng = random.Random(5)
    bodies = [
        b"node %s.%s %s[%d]: %s\n" % (
            rng.choice((b"user", b"daemon", b"kern")), rng.choice((b"info", b"warn", b"err")),
            rng.choice((b"app", b"netd", b"aos-sm", b"kernel")), rng.randrange(100, 9999),
            " ".join(rng.choice(WORDS) for _ in range(rng.randrange(4, 16))).encode())
        for _ in range(4096)
    ]
    start = datetime(2026, 11, 25, 0, 0, tzinfo=timezone.utc)
    average = sum(map(len, bodies)) / len(bodies) + 16
    lines_total = int(size / average)
    written = lines = 0
    with open(path, "wb") as out:
        while written < size:
            when = start + timedelta(seconds=lines * 86000 // max(lines_total, 1))
            prefix = when.strftime("%b %d %H:%M:%S ").encode()
            block = b"".join(prefix + bodies[(lines + n) % len(bodies)] for n in range(16))
            out.write(block)
            written += len(block)
            lines += 16
    return lines


def child(path: Path, part_size: int, idle: bool) -> None:
    from aos_sm.agent.logs.service import LogService, NoInstanceLogs
    from aos_sm.agent.logs.syslog import SyslogFileSource
    from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

    done = threading.Event()
    totals: Dict[str, int] = {"parts": 0, "compressed": 0}

    class CountingSender:
        def send(self, message: sm_pb2.SMOutgoingMessages) -> None:
            part = message.log
            totals["parts"] += 1
            totals["compressed"] += len(part.data)
            if part.status != "ok" or part.part == part.part_count:
                totals["status_error"] = int(part.status == "error")
                done.set()

    now = datetime(2026, 11, 26, tzinfo=timezone.utc)
    service = LogService(CountingSender(), system_log=SyslogFileSource(path, tz=timezone.utc),
                         instances=NoInstanceLogs(), max_part_size=part_size, max_part_count=10**6,
                         clock=lambda: now)
    started = time.perf_counter()
    if not idle:
        service.system_log(sm_pb2.SystemLogRequest(correlation_id="bench"))
        done.wait()
    elapsed = time.perf_counter() - started
    service.close()
    print(json.dumps({"seconds": elapsed, "max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      **totals}))


def run_child(path: Path, part_size: int, idle: bool) -> Dict[str, float]:
    command = [sys.executable, __file__, "--child", str(path), "--part-size", str(part_size)]
    out = subprocess.run(command + (["--idle"] if idle else []), capture_output=True, text=True, check=True,
                         timeout=600).stdout
    result: Dict[str, float] = json.loads(out.splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mb", type=float, default=200.0)
    parser.add_argument("--part-size", type=int, default=262144)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--idle", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.part_size, args.idle)
        return 0
    gzip_binary = shutil.which("gzip")
    if gzip_binary is None:
        print("gzip is not installed: no baseline", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "messages"
        lines = generate(path, int(args.size_mb * 1024 * 1024))
        size = path.stat().st_size
        with open(path, "rb") as source:  # warm the page cache for both sides alike
            while source.read(1 << 20):
                pass
        started = time.perf_counter()
        subprocess.run([gzip_binary, "-6", "-c", str(path)], stdout=subprocess.DEVNULL, check=True)
        gzip_seconds = time.perf_counter() - started
        agent = run_child(path, args.part_size, idle=False)
        idle = run_child(path, args.part_size, idle=True)
    if agent.get("status_error"):
        print("the agent answered with an error part", file=sys.stderr)
        return 1
    mib = size / (1024 * 1024)
    print(f"log: {mib:.1f} MiB, {lines} lines, {int(agent['parts'])} parts of {args.part_size} bytes")
    print(f"gzip -6: {mib / gzip_seconds:.1f} MiB/s; agent: {mib / agent['seconds']:.1f} MiB/s "
          f"(two passes); throughput ratio agent/gzip {gzip_seconds / agent['seconds']:.2f}")
    print(f"agent peak RSS {agent['max_rss_kib'] / 1024:.1f} MiB vs idle {idle['max_rss_kib'] / 1024:.1f} MiB; "
          f"peak RSS ratio streaming/idle {agent['max_rss_kib'] / idle['max_rss_kib']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

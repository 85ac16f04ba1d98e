"""`aos-sm cm-sim`: a person types commands, sees what the SM sends."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from queue import Empty, Queue
from typing import IO, Callable


from aos_sm.agent.app import Agent


def lines_of(stream: IO[str]) -> "Queue[str]":
    lines: "Queue[str]" = Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in stream], daemon=True).start()
    return lines


def wait_line(lines: "Queue[str]", pattern: str, timeout: float = 15.0) -> str:
    seen = []
    while True:
        try:
            line = lines.get(timeout=timeout)
        except Empty:
            raise AssertionError(f"no line matching {pattern!r}; saw {seen}") from None
        seen.append(line)
        if re.search(pattern, line):
            return line


def test_cm_sim_prints_what_the_sm_sends_and_sends_typed_commands(
    tmp_path: Path, start_agent: Callable[..., Agent]
) -> None:
    sim = subprocess.Popen(
        [sys.executable, "-m", "aos_sm.agent.cli", "cm-sim", "--listen", "127.0.0.1:0"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert sim.stdin is not None and sim.stdout is not None and sim.stderr is not None
        address = re.search(r"listening on (\S+);", wait_line(lines_of(sim.stderr), "listening on"))
        assert address is not None
        out = lines_of(sim.stdout)
        start_agent(address.group(1), nodeId="typed-node")
        sm_info = json.loads(wait_line(out, r'"smInfo"').split("] ", 1)[1])
        assert sm_info["smInfo"]["nodeId"] == "typed-node"
        wait_line(out, r'"nodeInstancesStatus"')
        sim.stdin.write("get-config\n")
        sim.stdin.flush()
        status = json.loads(wait_line(out, r'"nodeConfigStatus"').split("] ", 1)[1])
        assert status["nodeConfigStatus"]["state"] == "absent"
        sim.stdin.write("set-config 2.0.0\n")
        sim.stdin.flush()
        applied = json.loads(wait_line(out, r'"nodeConfigStatus"').split("] ", 1)[1])
        assert applied["nodeConfigStatus"]["version"] == "2.0.0"
        assert applied["nodeConfigStatus"]["error"] == {} or applied["nodeConfigStatus"]["error"].get("aosCode", 0) == 0
        sim.send_signal(signal.SIGTERM)
        assert sim.wait(timeout=10) == 0
    finally:
        if sim.poll() is None:
            sim.kill()
            sim.wait()

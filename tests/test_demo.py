"""`aos-sm demo` as a newcomer runs it: a process whose stdout is a story of numbered steps, each
ending in one outcome, with the agent's log kept out of it, and an honest summary."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import pytest

from aos_sm.agent.demo_image import real_service_problem

STEP = re.compile(r"^Step (\d+)\. (.+)$")
OUTCOME = re.compile(r"^  => (ok|FAILED|skipped)(?:: (.*))?$")
# What a log record looks like on its way out of the agent (cli.py's format and the plain one).
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) |"
                      r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL):")
REAL_STEPS = ("CM starts a real service", "InstantMonitoring shows", "CM fetches the service's log",
              "CM stops the service")


@dataclass
class Step:
    number: int
    title: str
    lines: List[str]
    outcome: str
    detail: str


@dataclass
class Transcript:
    code: int
    stdout: str
    stderr: str
    steps: List[Step]

    def step(self, title_start: str) -> Step:
        (found,) = [s for s in self.steps if s.title.startswith(title_start)]
        return found


def parse(stdout: str) -> List[Step]:
    """The steps of a transcript; asserts each titled step printed exactly one outcome."""
    steps: List[Step] = []
    current: Dict[str, object] = {}
    for line in stdout.splitlines():
        title = STEP.match(line)
        if title:
            assert not current, f"step {current.get('number')} printed no outcome before the next step"
            current = {"number": int(title.group(1)), "title": title.group(2), "lines": []}
            continue
        outcome = OUTCOME.match(line)
        if outcome:
            assert current, f"an outcome outside any step: {line!r}"
            steps.append(Step(current["number"], current["title"], current["lines"],  # type: ignore[arg-type]
                              outcome.group(1), outcome.group(2) or ""))
            current = {}
        elif current:
            current["lines"].append(line)  # type: ignore[attr-defined]
    assert not current, f"step {current.get('number')} printed no outcome"
    assert [s.number for s in steps] == list(range(1, len(steps) + 1))
    return steps


def run_demo(tmp_path: Path, *args: str, env: Dict[str, str] = {}) -> Transcript:  # noqa: B006 - read only
    result = subprocess.run([sys.executable, "-m", "aos_sm.agent.cli", "demo", *args],
                            capture_output=True, text=True, timeout=240, cwd=tmp_path,
                            env={**os.environ, "GRPC_ENABLE_FORK_SUPPORT": "false", **env})
    assert "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr
    return Transcript(result.returncode, result.stdout, result.stderr, parse(result.stdout))


def check_summary(transcript: Transcript) -> None:
    """The summary counts the outcomes and the exit code is 0 exactly when nothing tried failed."""
    counts = {kind: sum(s.outcome == kind for s in transcript.steps) for kind in ("ok", "FAILED", "skipped")}
    assert f"Summary: {counts['ok']} step(s) worked, {counts['FAILED']} failed, {counts['skipped']} skipped" \
        in transcript.stdout, transcript.stdout
    assert transcript.code == (1 if counts["FAILED"] else 0), transcript.stdout
    for step in transcript.steps:
        if step.outcome == "skipped":
            assert step.detail, f"step {step.number} skipped without a reason"
            assert str(step.number) in transcript.stdout.split("Summary:")[1]


def test_without_an_oci_runtime_the_real_service_steps_say_why_and_logs_stay_out_of_stdout(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    log_file = tmp_path / "agent.log"
    transcript = run_demo(tmp_path, "--log-file", str(log_file), env={"PATH": str(empty)})
    check_summary(transcript)
    # What the demo says is the reason this machine gives without runc on PATH (root first).
    reason = real_service_problem(which=lambda _name: None)
    assert reason is not None
    for title in REAL_STEPS:
        step = transcript.step(title)
        assert (step.outcome, step.detail) == ("skipped", reason), transcript.stdout
    if os.geteuid() == 0:
        assert "apt-get install runc" in transcript.stdout.split("Summary:")[1]
    # Every step the machine could do worked, including the ones issue 16 saw go quiet.
    tried = [s for s in transcript.steps if s.outcome != "skipped"]
    assert tried and all(s.outcome == "ok" for s in tried), transcript.stdout
    assert transcript.code == 0
    ghost = transcript.step("CM starts a service on a runtime this node does not have")
    assert any("failed" in line and "runtime not available" in line for line in ghost.lines), ghost.lines
    installed = transcript.step("CM installs node config 1.0.0")
    assert any("state absent (before)" in line for line in installed.lines)
    # The agent's log went to the file named at the end, not to stdout or stderr.
    assert [line for line in transcript.stdout.splitlines() if LOG_LINE.match(line)] == []
    assert [line for line in transcript.stderr.splitlines() if LOG_LINE.match(line)] == []
    assert "hardware probe" not in transcript.stdout
    assert f"The agent's log: {log_file}" in transcript.stdout
    assert "registered with CM" in log_file.read_text()


def test_verbose_sends_the_log_to_stderr_and_stdout_stays_the_story(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    transcript = run_demo(tmp_path, "--verbose", env={"PATH": str(empty)})
    check_summary(transcript)
    assert [line for line in transcript.stdout.splitlines() if LOG_LINE.match(line)] == []
    assert any("registered with CM" in line for line in transcript.stderr.splitlines() if LOG_LINE.match(line))
    assert "The agent's log:" not in transcript.stdout


def test_the_system_log_step_is_either_read_or_skipped_with_why(tmp_path: Path) -> None:
    transcript = run_demo(tmp_path, "--log-file", str(tmp_path / "agent.log"), env={"PATH": str(tmp_path)})
    step = transcript.step("CM asks for the system log")
    # With no journalctl on PATH the agent reads /var/log/messages: there or not, never an error.
    if Path("/var/log/messages").exists():
        assert step.outcome == "ok", transcript.stdout
    else:
        assert step.outcome == "skipped" and "/var/log/messages" in step.detail, transcript.stdout


@pytest.mark.system
def test_with_runc_a_real_service_goes_active_is_monitored_logs_and_stops(tmp_path: Path) -> None:
    problem = real_service_problem()
    if problem is not None:
        pytest.skip(f"demo system test skipped because {problem}")
    transcript = run_demo(tmp_path, "--log-file", str(tmp_path / "agent.log"))
    check_summary(transcript)
    start, monitoring, log, stop = (transcript.step(title) for title in REAL_STEPS)
    assert (start.outcome, start.detail) == ("ok", "active"), transcript.stdout
    assert [line.split(": demo-service ")[1] for line in start.lines if "UpdateInstancesStatus" in line] == \
        ["activating", "active"]
    assert any("GetBlobsInfos" in line for line in start.lines)
    assert monitoring.outcome == "ok", transcript.stdout
    ram = [float(m.group(1)) for line in monitoring.lines
           for m in [re.search(r"demo-service: CPU \d+ DMIPS, RAM ([\d.]+) MiB", line)] if m]
    assert ram and ram[0] > 0, monitoring.lines
    assert log.outcome == "ok" and any("hello from the aos-sm demo service" in line for line in log.lines)
    assert (stop.outcome, stop.detail) == ("ok", "inactive"), transcript.stdout
    assert not any(s.outcome == "FAILED" for s in transcript.steps) and transcript.code == 0
    # Nothing of the demo is left: its working dir and its cgroups, both named in step 1.
    (place,) = [m for line in transcript.steps[0].lines
                for m in [re.search(r"working dir (\S+), cgroups under (\S+)", line)] if m]
    assert not Path(place.group(1)).exists()
    assert not list(Path("/sys/fs/cgroup").glob(f"{place.group(2)}")) + \
        list(Path("/sys/fs/cgroup").glob(f"*/{place.group(2)}"))

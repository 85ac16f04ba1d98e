"""Issue 16, "the first hour": what a new user's mistakes get from the real ``aos-sm`` process.

Each case runs the CLI as a subprocess, as a user would, and checks the exit code and that the
message is one line naming the key and the file, with no traceback. ``subprocess.run``'s timeout
is the "no retry loop" check: a process that retried forever would not exit by itself.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, List

import pytest

from tls import TLSMaterial

BOARDS = Path(__file__).resolve().parent / "data" / "boards"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aos_sm.agent.cli", *args],
                          capture_output=True, text=True, timeout=60, cwd=cwd)


def write_config(tmp_path: Path, **data: Any) -> Path:
    """A config whose agent, if it ever started, would touch nothing of the machine's."""
    settings = {"workingDir": str(tmp_path / "work"), "resourcesConfigFile": str(tmp_path / "none.cfg"),
                "network": {"enabled": False}, "cgroupParent": f"aos-sm-first-hour-{os.getpid()}", **data}
    path = tmp_path / "sm.json"
    path.write_text(json.dumps(settings))
    return path


def one_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_run_without_cm_server_url_exits_2_naming_the_key_and_the_file(tmp_path: Path) -> None:
    config = write_config(tmp_path, tlsMode="plaintext")
    result = run_cli("run", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert "cmServerURL" in line and str(config) in line and "--simulator" in line
    assert not (tmp_path / "work").exists()  # refused before anything was set up


def test_run_with_simulator_registers_with_the_built_in_cm(tmp_path: Path) -> None:
    config = write_config(tmp_path, nodeId="first-hour", runtimes=[{"type": "runc"}])
    agent = subprocess.Popen([sys.executable, "-m", "aos_sm.agent.cli", "run", "--simulator", "--config", str(config)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    printed: List[str] = []
    try:
        assert agent.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(agent.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 30
        while not any('"smInfo"' in line for line in printed) and time.monotonic() < deadline:
            if selector.select(timeout=1.0):
                line = agent.stdout.readline()
                if not line:
                    break
                printed.append(line)
        registered = [json.loads(line) for line in printed if '"smInfo"' in line]
        assert registered and registered[0]["smInfo"]["nodeId"] == "first-hour", printed
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=30)
        assert agent.returncode == 0, stderr
        assert "--simulator: using the built-in CM simulator" in stderr and "plaintext" in stderr
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.communicate()


def test_probe_of_a_root_that_does_not_exist_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent"  # the issue's /nonexistent, without trusting this machine not to have one
    result = run_cli("probe", "--root", str(missing), cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    line = one_line(result.stderr)
    assert str(missing) in line and "not a directory" in line


def test_probe_of_a_tree_without_proc_meminfo_exits_2_instead_of_0_bytes_of_ram(tmp_path: Path) -> None:
    root = tmp_path / "mounted-image"
    (root / "proc").mkdir(parents=True)
    result = run_cli("probe", "--root", str(root), "--json", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    line = one_line(result.stderr)
    assert str(root) in line and "meminfo" in line


@pytest.mark.parametrize("command", ["run", "probe"])
@pytest.mark.parametrize("text, says", [
    ("{\"cmServerURL\": ", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    (json.dumps({"cmServerURL": "127.0.0.1:1", "tlsMode": "plaintext", "cmReconnectTimeout": []}), "cmReconnectTimeout"),
    (json.dumps({"monitoring": {"pollPeriod": True}}), "monitoring.pollPeriod"),
])
def test_a_bad_config_names_its_path(tmp_path: Path, command: str, text: str, says: str) -> None:
    config = tmp_path / "sm.json"
    config.write_text(text)
    result = run_cli(command, "--config", str(config), *(["--root", str(BOARDS / "rpi4")] if command == "probe" else []),
                     cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    line = one_line(result.stderr)
    assert f"{config}: " in line and says in line and "(file)" not in line


@pytest.mark.parametrize("settings", [
    {"cmServerURL": "127.0.0.1:1", "tlsMode": "tls"},
    {"cmServerURL": "127.0.0.1:1", "tlsMode": "mtls", "certFile": "/nonexistent/c.pem", "keyFile": "/nonexistent/k.pem"},
    # With IAM the CA verifies IAM first; no cmServerURL needed to get there.
    {"cmServerURL": "127.0.0.1:1", "iamPublicServerURL": "127.0.0.1:1"},
], ids=["tls", "mtls", "iam"])
def test_a_missing_ca_cert_exits_2_by_itself_naming_the_key_and_the_file(tmp_path: Path, settings: dict) -> None:
    ca = tmp_path / "no-such-ca.pem"
    config = write_config(tmp_path, caCert=str(ca), cmReconnectTimeout="100ms", **settings)
    result = run_cli("run", "--config", str(config), cwd=tmp_path)  # the timeout fails a retry loop
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert "caCert" in line and str(ca) in line and str(config) in line


def test_a_working_dir_that_cannot_be_made_names_the_key_and_the_file(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    config = write_config(tmp_path, cmServerURL="127.0.0.1:1", tlsMode="plaintext", workingDir=str(blocker / "work"))
    result = run_cli("run", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert f"{config}: workingDir: " in line and str(blocker) in line


def test_iam_without_ca_cert_is_refused_rather_than_reached_in_plaintext(tmp_path: Path) -> None:
    config = write_config(tmp_path, cmServerURL="127.0.0.1:1", tlsMode="tls", iamPublicServerURL="127.0.0.1:1")
    result = run_cli("run", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert "caCert" in line and "iamPublicServerURL" in line and str(config) in line


def test_a_cert_file_that_is_a_directory_exits_2(tmp_path: Path, tls_material: TLSMaterial) -> None:
    config = write_config(tmp_path, cmServerURL="127.0.0.1:1", caCert=str(tls_material.ca.cert),
                          certFile=str(tmp_path), keyFile=str(tls_material.client.key))
    result = run_cli("run", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert "certFile" in line and str(tmp_path) in line and "directory" in line


def test_an_unknown_key_keeps_its_case_and_gets_a_suggestion(tmp_path: Path) -> None:
    config = write_config(tmp_path, PollPeriod="1s", cgroup_Parent="x", tlsMode="plaintext")
    result = run_cli("run", "--config", str(config), cwd=tmp_path)  # exits 2 on the missing cmServerURL
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "unknown configuration key 'PollPeriod' ignored (did you mean 'monitoring.pollPeriod'?)" in result.stderr
    assert "unknown configuration key 'cgroup_Parent' ignored (did you mean 'cgroupParent'?)" in result.stderr
    assert "pollperiod" not in result.stderr

"""`aos-sm iam-sim`: the fake IAM as a command; `renew` typed on stdin reaches a subscriber."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import List

import pytest

from aos_sm.agent.iam.client import GrpcIamClient
from aos_sm.agent.iam.port import IamCertInfo


def test_iam_sim_serves_node_info_and_renews_on_command(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "aos_sm.agent.cli", "iam-sim", "--dir", str(tmp_path / "iam"), "--public",
         "127.0.0.1:0", "--protected", "127.0.0.1:0", "--node-id", "cli-node", "--max-dmips", "4242"],
        stdin=subprocess.PIPE, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert process.stdin is not None and process.stderr is not None
    try:
        first = process.stderr.readline()
        match = re.search(r"public (127\.0\.0\.1:\d+), protected (127\.0\.0\.1:\d+), CA (\S+);", first)
        assert match, first
        assert "a CM for it: aos-sm cm-sim --tls-cert" in process.stderr.readline()
        client = GrpcIamClient(match.group(1), ca_cert=Path(match.group(3)), cert_type="sm",
                               protected_url=match.group(2), reconnect_first_wait=0.05, reconnect_cap=0.2)
        info = client.get_node_info(10)
        assert (info.node_id, info.max_dmips) == ("cli-node", 4242)
        heard: List[IamCertInfo] = []
        arrived = threading.Event()
        subscription = client.subscribe_cert_changed("sm", lambda c: (heard.append(c), arrived.set()))
        for _ in range(50):  # until the subscription (its own thread) is attached
            process.stdin.write("renew\n")
            process.stdin.flush()
            if arrived.wait(0.2):
                break
        assert heard and heard[-1].cert_url == (tmp_path / "iam" / "sm.pem").resolve().as_uri()
        subscription.cancel()
        client.close()
        process.stdin.write("quit\n")
        process.stdin.close()
        process.terminate()
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def one_line_exit_2(args: List[str], tmp_path: Path) -> str:
    """iam-sim with bad ``args``: exit 2, exactly one line on stderr, no traceback."""
    result = subprocess.run([sys.executable, "-m", "aos_sm.agent.cli", "iam-sim", *args], stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2, (args, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("args, says", [
    (["--public", "bogus"], "--public 'bogus': expected HOST:PORT"),
    (["--protected", "8089"], "--protected '8089': expected HOST:PORT"),
    (["--public", "127.0.0.1:70000"], "--public '127.0.0.1:70000': expected HOST:PORT"),
    (["--public", "[::1:0"], "IPv6 host in brackets"),
])
def test_a_bad_address_is_one_line_and_exit_2(tmp_path: Path, args: List[str], says: str) -> None:
    line = one_line_exit_2(["--dir", str(tmp_path / "iam"), "--protected", "127.0.0.1:0", "--public", "127.0.0.1:0",
                            *args], tmp_path)
    assert says in line and line.startswith("aos-sm iam-sim: ")


def test_a_dir_that_cannot_be_made_is_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    line = one_line_exit_2(["--dir", str(tmp_path / "file" / "iam"), "--public", "127.0.0.1:0",
                            "--protected", "127.0.0.1:0"], tmp_path)
    assert f"--dir {tmp_path / 'file' / 'iam'}" in line


def test_a_port_in_use_is_refused(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = "127.0.0.1:%d" % taken.getsockname()[1]
        line = one_line_exit_2(["--dir", str(tmp_path / "iam"), "--public", address, "--protected", "127.0.0.1:0"],
                               tmp_path)
    assert f"cannot listen on {address}: the port is in use" in line

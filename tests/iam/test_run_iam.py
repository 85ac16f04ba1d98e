"""`aos-sm run` with IAM away at start: it says so in STATUS= (a real notify socket) and in its
log, contacts no CM, and registers with IAM's node id once IAM is back."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import List

from contract_cm import ContractCM
from iam_helpers import iam_config

from aos_sm.agent.iam.sim import SimulatedIAM

WAIT = 30.0  # generous: the machine is shared


class StatusReader:
    """Reads every STATUS= the agent sends, on a thread: a datagram socket's queue is short
    (net.unix.max_dgram_qlen, 10 by default) and the agent drops what does not fit."""

    def __init__(self, sock: socket.socket) -> None:
        self.seen: List[str] = []
        self._sock = sock
        sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._open = True
        self._thread.start()

    def _run(self) -> None:
        while self._open:
            try:
                data = self._sock.recv(4096)
            except (socket.timeout, OSError):
                continue
            self.seen += [f[len("STATUS="):] for f in data.decode().split("\n") if f.startswith("STATUS=")]

    def wait_for(self, text: str, timeout: float = WAIT) -> List[str]:
        deadline = time.monotonic() + timeout
        while not any(text in status for status in self.seen):
            assert time.monotonic() < deadline, f"no STATUS with {text!r} within {timeout}s: {self.seen}"
            time.sleep(0.05)
        return list(self.seen)

    def close(self) -> None:
        self._open = False
        self._thread.join()


def test_run_waits_for_iam_says_so_and_registers_when_it_is_back(
        tmp_path: Path, iam: SimulatedIAM, tls_cm: ContractCM) -> None:
    iam.stop()
    config = iam_config(tmp_path, iam, tls_cm.address)
    (tmp_path / "sm.json").write_text(json.dumps(dict(config.raw)))
    directory = tempfile.mkdtemp(prefix="sdn-")  # AF_UNIX paths stop at 108 bytes
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(os.path.join(directory, "notify"))
    log = (tmp_path / "agent.log").open("wb")
    agent = subprocess.Popen([sys.executable, "-m", "aos_sm.agent.cli", "run", "--config", str(tmp_path / "sm.json")],
                             env={**os.environ, "NOTIFY_SOCKET": os.path.join(directory, "notify")},
                             stdout=subprocess.DEVNULL, stderr=log)
    reader = StatusReader(sock)
    try:
        seen = reader.wait_for("before contacting CM")
        assert any(s.startswith(f"waiting for IAM at {iam.public_address}") for s in seen)
        assert tls_cm.sessions == []
        iam.start()
        session = tls_cm.wait_session(0, WAIT)
        (sm_info,) = [session.wait_for("sm_info", WAIT)]
        assert sm_info.node_id == "iam-node-7"
        reader.wait_for("registered with CM at")
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(WAIT) == 0
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        log.close()
        reader.close()
        sock.close()
        shutil.rmtree(directory, ignore_errors=True)
    text = (tmp_path / "agent.log").read_text()
    assert "waiting for IAM at" in text and "before contacting CM" in text

"""A Sender that records LogData replies, readers for what a reply carried, and a real journal."""

from __future__ import annotations

import gzip
import json
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Dict, List

from google.protobuf.timestamp_pb2 import Timestamp

from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2


class RecordingSender:
    def __init__(self) -> None:
        self._done = threading.Condition()
        self.messages: List[sm_pb2.SMOutgoingMessages] = []

    def send(self, message: sm_pb2.SMOutgoingMessages) -> None:
        with self._done:
            self.messages.append(message)
            self._done.notify_all()

    def parts(self, correlation_id: str) -> List[sm_pb2.LogData]:
        with self._done:
            return [m.log for m in self.messages if m.WhichOneof("SMOutgoingMessage") == "log"
                    and m.log.correlation_id == correlation_id]

    def _complete(self, correlation_id: str) -> bool:
        parts = self.parts(correlation_id)
        if not parts:
            return False
        last = parts[-1]
        return last.status != "ok" or last.part == last.part_count

    def wait_reply(self, correlation_id: str, timeout: float = 30.0) -> List[sm_pb2.LogData]:
        with self._done:
            assert self._done.wait_for(lambda: self._complete(correlation_id), timeout), \
                f"no complete reply for {correlation_id}: {self.parts(correlation_id)}"
        return self.parts(correlation_id)


def assert_ok_parts(parts: List[sm_pb2.LogData], max_part_size: int) -> bytes:
    """The parts are ``ok`` 1..N of N, each valid gzip of at most max_part_size bytes; returns
    their content concatenated."""
    count = len(parts)
    assert count > 0
    assert [(p.part, p.part_count, p.status, p.error.aos_code) for p in parts] == [
        (n, count, "ok", 0) for n in range(1, count + 1)]
    assert all(p.HasField("error") for p in parts)
    content = [gzip.decompress(p.data) for p in parts]
    assert all(0 < len(data) <= max_part_size for data in content)
    return b"".join(content)


def one_status(parts: List[sm_pb2.LogData]) -> Dict[str, object]:
    assert len(parts) == 1, parts
    part = parts[0]
    return {"status": part.status, "part": part.part, "part_count": part.part_count,
            "code": part.error.aos_code, "message": part.error.message, "has_error": part.HasField("error")}


def stamp(when: datetime) -> Timestamp:
    value = Timestamp()
    value.FromMicroseconds(int((when - datetime(1970, 1, 1, tzinfo=timezone.utc)) / timedelta(microseconds=1)))
    return value


JOURNALD = Path("/lib/systemd/systemd-journald")


class NamespacedJournal:
    """A namespaced systemd-journald the test started (conftest.py ``journal``)."""

    def __init__(self, namespace: str, process: "subprocess.Popen[bytes]") -> None:
        self.namespace = namespace
        self.process = process
        self.socket = Path(f"/run/systemd/journal.{namespace}/socket")
        machine_id = Path("/etc/machine-id").read_text().strip()
        self.candidates = [Path(f"/var/log/journal/{machine_id}.{namespace}"),
                           Path(f"/run/log/journal/{machine_id}.{namespace}")]

    @property
    def directory(self) -> Path:
        for candidate in self.candidates:
            if candidate.is_dir():
                return candidate
        raise AssertionError(f"journald {self.namespace} wrote no journal directory")

    def send(self, message: str, priority: int = 6, **fields: str) -> None:
        """Log one entry through journald's native protocol from this process."""
        payload = {"MESSAGE": message, "PRIORITY": str(priority), "SYSLOG_IDENTIFIER": "aos-test", **fields}
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto("".join(f"{k}={v}\n" for k, v in payload.items()).encode(), str(self.socket))

    def send_from_another_process(self, message: str, priority: int) -> None:
        code = ("import socket,sys; s=socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); "
                "s.sendto(sys.argv[1].encode(), sys.argv[2])")
        payload = f"MESSAGE={message}\nPRIORITY={priority}\nSYSLOG_IDENTIFIER=other\n"
        subprocess.run([sys.executable, "-c", code, payload, str(self.socket)], check=True, timeout=30)

    def entries(self) -> List[Dict[str, Any]]:
        out = subprocess.run(["journalctl", "--no-pager", "-q", "-o", "json", "--directory", str(self.directory)],
                             capture_output=True, check=True, timeout=30).stdout
        return [json.loads(line) for line in out.splitlines()]

    def wait_for_messages(self, messages: List[str], timeout: float = 20.0) -> List[Dict[str, Any]]:
        """Our entries, once journald has written all of them (it writes asynchronously)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                found = [e for e in self.entries() if e.get("MESSAGE") in messages]
            except (AssertionError, subprocess.CalledProcessError):
                found = []
            if len(found) == len(messages) or time.monotonic() > deadline:
                assert [e["MESSAGE"] for e in found] == messages
                return found
            time.sleep(0.05)

"""A Sender that records LogData replies, and readers for what a reply carried."""

from __future__ import annotations

import gzip
import threading
from typing import Dict, List

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

"""An in-memory transport (agent/transport.py's port) with the CM's side for tests to drive.

The gateway runs its real threads and core over it; only the network is replaced. A test pushes
frames (raw bytes, or messages it encodes), ends streams with a status code, makes the next
connects fail, and waits for what the agent sent, with timeouts and without sleeping.
"""

from __future__ import annotations

import collections
import queue
import threading
from typing import Any, Callable, Deque, List, Optional, Sequence, Tuple, Union

from aos_sm.agent.errors import NotFound
from aos_sm.agent.transport import TransportFailure
from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

Out = sm_pb2.SMOutgoingMessages
WAIT = 10.0  # generous: five helpers share two cores; waits end as soon as the condition holds


class FakeStream:
    def __init__(self, cm: "FakeCM", index: int, first: Sequence[Out]) -> None:
        self.cm = cm
        self.index = index
        self.sent: List[Out] = list(first)
        self.closed_by_agent = threading.Event()
        self.ended = threading.Event()
        self._inbox: "queue.SimpleQueue[Union[bytes, TransportFailure]]" = queue.SimpleQueue()
        self._taken: set = set()

    # The agent's side (the Stream port).

    def send(self, message: Out) -> None:
        with self.cm.cond:
            self.sent.append(message)
            self.cm.cond.notify_all()

    def backlog(self) -> int:
        return 0

    def receive(self) -> bytes:
        item = self._inbox.get()
        if isinstance(item, TransportFailure):
            self._inbox.put(item)  # every later receive ends the same way
            raise item
        return item

    def close(self) -> None:
        self.closed_by_agent.set()
        self.end("CANCELLED", "closed by the agent")

    # CM's side.

    def push(self, message: Union[bytes, sm_pb2.SMIncomingMessages]) -> None:
        self._inbox.put(message if isinstance(message, bytes) else message.SerializeToString())

    def end(self, code: str = "UNAVAILABLE", reason: str = "CM went away") -> None:
        self.ended.set()
        self._inbox.put(TransportFailure(code, f"{code}: {reason}"))

    def kinds(self) -> List[str]:
        with self.cm.cond:
            return [str(message.WhichOneof("SMOutgoingMessage")) for message in self.sent]

    def wait_for(self, kind: str, predicate: Optional[Callable[[Any], bool]] = None,
                 timeout: float = WAIT) -> Any:
        """The earliest ``kind`` message (matching ``predicate``) not returned before."""
        found: List[Any] = []

        def match() -> bool:
            for index, message in enumerate(self.sent):
                if index in self._taken or message.WhichOneof("SMOutgoingMessage") != kind:
                    continue
                inner = getattr(message, kind)
                if predicate is None or predicate(inner):
                    self._taken.add(index)
                    found.append(inner)
                    return True
            return False

        with self.cm.cond:
            if not self.cm.cond.wait_for(match, timeout):
                raise AssertionError(f"no matching {kind} within {timeout}s; sent {self.kinds()}")
        return found[0]


class FakeConnection:
    def __init__(self, cm: "FakeCM", failure: Optional[TransportFailure]) -> None:
        self.cm = cm
        self._failure = failure
        self.closed = False

    def wait_ready(self, timeout: float) -> None:
        if self._failure is not None:
            raise self._failure

    def open_stream(self, first: Sequence[Out]) -> FakeStream:
        with self.cm.cond:
            stream = FakeStream(self.cm, len(self.cm.streams), first)
            self.cm.streams.append(stream)
            self.cm.cond.notify_all()
        return stream

    def get_blobs_infos(self, digests: Sequence[str], timeout: float) -> List[str]:
        with self.cm.cond:
            self.cm.blob_requests.append(list(digests))
            missing = [digest for digest in digests if digest not in self.cm.blob_urls]
            if missing:
                raise NotFound(f"CM knows no URL for a digest: {', '.join(missing)}")
            return [self.cm.blob_urls[digest] for digest in digests]

    def close(self) -> None:
        self.closed = True


class FakeCM:
    """The Transport port, plus the CM's controls."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.streams: List[FakeStream] = []
        self.connections: List[FakeConnection] = []
        self.blob_urls: dict = {}
        self.blob_requests: List[List[str]] = []
        # Each connect takes the next entry: a failure to report (code, reason), local or at ready.
        self.failures: Deque[Tuple[str, str, bool]] = collections.deque()

    def fail_next_connects(self, code: str, reason: str, count: int = 1, *, local: bool = False) -> None:
        with self.cond:
            self.failures.extend([(code, reason, local)] * count)

    def connect(self) -> FakeConnection:
        with self.cond:
            failure: Optional[TransportFailure] = None
            if self.failures:
                code, reason, local = self.failures.popleft()
                failure = TransportFailure(code, reason)
                if local:
                    raise failure
            connection = FakeConnection(self, failure)
            self.connections.append(connection)
            return connection

    def wait_stream(self, index: int = -1, timeout: float = WAIT) -> FakeStream:
        needed = index + 1 if index >= 0 else -index
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.streams) >= needed, timeout):
                raise AssertionError(f"{len(self.streams)} streams within {timeout}s, wanted {index}")
            return self.streams[index]

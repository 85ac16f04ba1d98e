"""Everything the SM sends to CM outside registration goes through the outbox.

While a session is live, messages go straight to its stream. During an outage the reference SM
fails every send; we keep what CM still needs later (PROTOCOL.md, "We do better"), bounded:

- alerts and instance status updates: kept in order; past the bound the oldest are dropped and
  counted, and the count is reported to CM as a CoreAlert when the session returns;
- InstantMonitoring: only the latest sample (an old one says nothing a new one does not);
  also while live, a sample is dropped when the stream's write queue already holds
  ``max_backlog`` messages (CM stopped reading): samples must not pile up without bound;
- NodeInstancesStatus: dropped, because registration sends a fresh one;
- replies to requests (NodeConfigStatus, AverageMonitoring, LogData): dropped, because they
  answer a request of a session that no longer exists and CM has already timed it out.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Callable, Deque, Dict, Optional

from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

from .messages import core_alert

log = logging.getLogger(__name__)

Writer = Callable[[sm_pb2.SMOutgoingMessages], None]
Backlog = Callable[[], int]

KIND = "SMOutgoingMessage"
_KEPT = ("alert", "update_instances_status")


class Outbox:
    def __init__(self, *, max_kept: int = 512, max_backlog: int = 64) -> None:
        self._lock = threading.Lock()
        self._writer: Optional[Writer] = None
        self._backlog: Backlog = lambda: 0
        self._max_backlog = max_backlog
        self._skipped_samples = 0
        self._pending: Deque[sm_pb2.SMOutgoingMessages] = collections.deque()
        self._max_kept = max_kept
        self._dropped: Dict[str, int] = collections.Counter()

    @property
    def live(self) -> bool:
        return self._writer is not None

    def send(self, message: sm_pb2.SMOutgoingMessages) -> None:
        """Send now if a session is live, else keep or drop by the rules above. Never raises."""
        with self._lock:
            if self._writer is not None:
                if message.WhichOneof(KIND) == "instant_monitoring" and self._backlog() >= self._max_backlog:
                    self._skipped_samples += 1
                    if self._skipped_samples == 1:
                        log.warning("CM is not reading: InstantMonitoring skipped until the stream drains")
                    return
                self._skipped_samples = 0
                self._writer(message)
                return
            self._keep(message)

    def _keep(self, message: sm_pb2.SMOutgoingMessages) -> None:
        kind = message.WhichOneof(KIND)
        if kind == "instant_monitoring":
            for queued in list(self._pending):
                if queued.WhichOneof(KIND) == kind:
                    self._pending.remove(queued)
            self._pending.append(message)
        elif kind in _KEPT:
            if len(self._pending) >= self._max_kept:
                oldest = self._pending.popleft()
                self._dropped[str(oldest.WhichOneof(KIND))] += 1
            self._pending.append(message)
        else:
            log.debug("not connected to CM: %s dropped (it answers a closed session)", kind)

    def attach(self, writer: Writer, backlog: Optional[Backlog] = None) -> int:
        """A session went live: send what waited, in order, then send directly. Returns the count.
        ``backlog`` tells how many messages the session's stream has not taken yet."""
        with self._lock:
            self._backlog = backlog or (lambda: 0)
            if self._dropped:
                summary = ", ".join(f"{count} {kind}" for kind, count in sorted(self._dropped.items()))
                log.warning("while disconnected from CM the outbox dropped %s", summary)
                writer(core_alert(f"while disconnected from CM, dropped the oldest: {summary}"))
                self._dropped.clear()
            sent = 0
            while self._pending:
                writer(self._pending.popleft())
                sent += 1
            self._writer = writer
            return sent

    def detach(self) -> None:
        with self._lock:
            self._writer = None

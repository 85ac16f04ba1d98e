"""LogsPort: answers SystemLogRequest, InstanceLogRequest and InstanceCrashLogRequest.

The CM reader thread only queues a request here; a small pool of worker threads reads, chunks
and sends, so several requests are served at once and the command loop never waits on a log.
Every reply carries the request's own correlation id, and every request gets a reply: parts
``ok`` 1..N, or one ``empty`` / ``absent`` part, or one ``error`` part (PROTOCOL.md "Logs").
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Callable, Iterator, Protocol, Sequence, Union

from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

from ..errors import AosError, OutOfRange, error_info_from_exception, error_info_ok
from ..messages import log_error
from ..ports import CrashRecord, InstanceLogFile, InstanceLogSourcePort, Sender
from .chunker import count_parts, gzip_parts, pad_parts, split_parts
from .instances import Section, plan_crash_log, plan_instance_log, section_lines
from .timerange import TimeRange, request_range

log = logging.getLogger(__name__)

Lines = Callable[[], Iterator[bytes]]
_Request = Union[sm_pb2.SystemLogRequest, sm_pb2.InstanceLogRequest, sm_pb2.InstanceCrashLogRequest]
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class SystemLogSource(Protocol):
    def describe(self) -> str: ...

    def lines(self, window: TimeRange, now: datetime) -> Iterator[bytes]:
        """The source's lines stamped within ``window``, oldest first, each ending in a newline."""


class NoInstanceLogs:
    """The source wired until the launcher records instances: no instances, no crashes."""

    def instance_logs(self) -> Sequence[InstanceLogFile]:
        return ()

    def crashes(self) -> Sequence[CrashRecord]:
        return ()


# The messages the reference SM puts in an `absent` reply, with aos_code 0 (PROTOCOL.md "Logs").
NO_INSTANCE = "no service instance found"
NO_CRASH = "no instance crash found"


def _status_part(correlation_id: str, status: str, message: str = "") -> sm_pb2.SMOutgoingMessages:
    error = error_info_ok()
    error.message = message
    return sm_pb2.SMOutgoingMessages(
        log=sm_pb2.LogData(correlation_id=correlation_id, part=1, part_count=1, status=status, error=error)
    )


def _close(lines: Iterator[bytes]) -> None:
    """Stop a source early (its generator kills a journalctl still writing)."""
    close = getattr(lines, "close", None)
    if close is not None:
        close()


class LogService:
    def __init__(self, sender: Sender, *, system_log: SystemLogSource, instances: InstanceLogSourcePort,
                 max_part_size: int, max_part_count: int, workers: int = 2, clock: Clock = utc_now) -> None:
        self._sender = sender
        self._system_log = system_log
        self._instances = instances
        self._max_part_size = max_part_size
        self._max_part_count = max_part_count
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="logs")

    def close(self, wait: bool = False) -> None:
        """Drop queued requests; a request being read finishes on its thread (``wait``: first)."""
        self._pool.shutdown(wait=wait, cancel_futures=True)

    # LogsPort: called on the CM reader thread, so each only queues its work.

    def system_log(self, request: sm_pb2.SystemLogRequest) -> None:
        window = self._window(request)
        self._submit(request.correlation_id, lambda: self._send_system_log(request.correlation_id, window))

    def instance_log(self, request: sm_pb2.InstanceLogRequest) -> None:
        window = self._window(request)
        self._submit(request.correlation_id, lambda: self._send_sections(
            request.correlation_id, plan_instance_log(self._instances.instance_logs(), request.filter, window),
            NO_INSTANCE))

    def crash_log(self, request: sm_pb2.InstanceCrashLogRequest) -> None:
        window = self._window(request)
        self._submit(request.correlation_id, lambda: self._send_sections(
            request.correlation_id, plan_crash_log(self._instances.crashes(), request.filter, window), NO_CRASH))

    # Worker side.

    def _window(self, request: _Request) -> TimeRange:
        since = getattr(request, "from") if request.HasField("from") else None
        until = request.till if request.HasField("till") else None
        return request_range(since, until, self._clock())

    def _submit(self, correlation_id: str, job: Callable[[], None]) -> None:
        def run() -> None:
            try:
                job()
            except Exception as err:
                # A translated error (a missing file, a bad range) is expected: one line, no traceback.
                expected = isinstance(err, (OSError, AosError))
                log.warning("log request %s failed: %s", correlation_id, err, exc_info=not expected)
                self._sender.send(log_error(correlation_id, error_info_from_exception(err)))

        self._pool.submit(run)

    def _send_system_log(self, correlation_id: str, window: TimeRange) -> None:
        now = self._clock()
        self._stream(correlation_id, lambda: self._system_log.lines(window, now))

    def _send_sections(self, correlation_id: str, sections: Sequence[Section], absent_message: str) -> None:
        if not sections:
            self._sender.send(_status_part(correlation_id, "absent", absent_message))
            return
        self._stream(correlation_id, lambda: section_lines(sections))

    def _stream(self, correlation_id: str, lines: Lines) -> None:
        """Two passes over ``lines()`` (chunker.py says why): count, then compress and send."""
        first = lines()
        try:
            part_count = count_parts(first, self._max_part_size, self._max_part_count)
        finally:
            _close(first)
        if part_count == 0:
            self._sender.send(_status_part(correlation_id, "empty"))
            return
        if part_count > self._max_part_count:
            raise OutOfRange(
                f"the log takes more than {self._max_part_count} parts of {self._max_part_size} bytes "
                "(logging.maxPartCount, logging.maxPartSize): ask for a shorter time range")
        sent = 0
        second = lines()
        try:
            for part, data in pad_parts(gzip_parts(split_parts(second, self._max_part_size)), part_count):
                if not getattr(self._sender, "live", True):
                    # The session that asked is gone and the outbox drops replies to it: stop reading.
                    log.info("log request %s: CM disconnected after %d of %d parts", correlation_id, sent, part_count)
                    return
                self._sender.send(sm_pb2.SMOutgoingMessages(log=sm_pb2.LogData(
                    correlation_id=correlation_id, part_count=part_count, part=part, data=data, status="ok",
                    error=error_info_ok())))
                sent = part
        finally:
            _close(second)
        log.info("log request %s: %d parts sent", correlation_id, sent)

"""The systemd journal as the system log, read through ``journalctl -o json``.

``journalctl`` runs in a subprocess and its output is read from the pipe one entry (one JSON
line) at a time, never whole. ``--since``/``--until`` narrow the read to whole seconds around the
range; the exact, inclusive range is then applied on each entry's ``__REALTIME_TIMESTAMP``
(microseconds), because journalctl's own bounds are second-grained in the formats every systemd
version accepts.
"""

from __future__ import annotations

import json
import logging
import subprocess
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from ..errors import RuntimeFailure
from .timerange import TimeRange

log = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def field_text(value: Any) -> str:
    """A journal field from ``-o json``: a string, a list of byte values (binary or invalid UTF-8
    data), or a list of those (a field repeated in one entry; the first is taken)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(b, int) for b in value):
        return bytes(b & 0xFF for b in value).decode("utf-8", "replace")
    if isinstance(value, list) and value:
        return field_text(value[0])
    return ""


def entry_time(entry: Dict[str, Any]) -> Optional[datetime]:
    try:
        return _EPOCH + timedelta(microseconds=int(field_text(entry.get("__REALTIME_TIMESTAMP"))))
    except ValueError:
        return None


def format_entry(entry: Dict[str, Any]) -> Optional[Tuple[datetime, bytes]]:
    """One journal entry as a syslog-like text line ``<RFC 3339 UTC> <identifier>[<pid>]: <message>``."""
    stamp = entry_time(entry)
    if stamp is None:
        return None
    identifier = field_text(entry.get("SYSLOG_IDENTIFIER")) or field_text(entry.get("_COMM")) or "-"
    pid = field_text(entry.get("_PID")) or field_text(entry.get("SYSLOG_PID"))
    message = field_text(entry.get("MESSAGE")).rstrip("\n").replace("\n", "\n  ")
    text = f"{stamp.strftime('%Y-%m-%dT%H:%M:%S.%fZ')} {identifier}{f'[{pid}]' if pid else ''}: {message}\n"
    return stamp, text.encode("utf-8", "replace")


def journalctl_command(journalctl: str, directory: Optional[Path], extra: List[str]) -> List[str]:
    command = [journalctl, "--no-pager", "--quiet", "-o", "json"]
    if directory is not None:
        command += ["--directory", str(directory)]
    return command + extra


def read_entries(command: List[str], started: Optional[Callable[["subprocess.Popen[bytes]"], None]] = None,
                 ) -> Iterator[Dict[str, Any]]:
    """Run journalctl and yield its entries; a failing journalctl raises RuntimeFailure with its
    message. Closing the iterator early stops the subprocess; ``started`` gets the process, so
    another thread can stop a follower by killing it."""
    with tempfile.TemporaryFile() as errors:
        try:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, stdin=subprocess.DEVNULL)
        except OSError as err:
            raise RuntimeFailure.from_os_error(err, "cannot run journalctl") from err
        if started is not None:
            started(process)
        finished = False
        try:
            assert process.stdout is not None
            for line in process.stdout:
                try:
                    entry = json.loads(line)
                except ValueError:
                    log.warning("journalctl wrote a line that is not JSON; skipped")
                    continue
                if isinstance(entry, dict):
                    yield entry
            finished = True
        finally:
            if not finished:
                process.kill()
            process.stdout.close()  # type: ignore[union-attr]
            code = process.wait()
        errors.seek(0)
        reason = errors.read(2000).decode("utf-8", "replace").strip()
        if code != 0:
            raise RuntimeFailure(f"journalctl failed (exit {code}): {reason or 'no message'}", exit_code=code)


class JournalSource:
    """The system journal (or a journal directory, for tests and exported journals)."""

    def __init__(self, *, journalctl: str = "journalctl", directory: Optional[Path] = None) -> None:
        self._journalctl = journalctl
        self._directory = directory

    def describe(self) -> str:
        return f"journal {self._directory}" if self._directory is not None else "journald"

    def lines(self, window: TimeRange, now: datetime) -> Iterator[bytes]:
        extra = []
        if window.since is not None:
            extra.append(f"--since=@{int(window.since.timestamp())}")
        if window.until is not None:
            extra.append(f"--until=@{int(window.until.timestamp()) + 1}")
        for entry in read_entries(journalctl_command(self._journalctl, self._directory, extra)):
            formatted = format_entry(entry)
            if formatted is not None and window.contains(formatted[0]):
                yield formatted[1]

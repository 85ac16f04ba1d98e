"""A syslog-format file as the system log, for nodes without journald (busybox syslogd on
Buildroot images writes ``/var/log/messages``).

Classic syslog lines (RFC 3164, busybox's default) start ``Nov 25 10:45:00`` with no year and no
zone. We read the stamp as the node's local time (``tz``; Buildroot nodes usually run in UTC) and
infer the year as logrotate-era tools do: the current year, unless that puts the line more than a
day in the future, in which case it was written last year (a December line read in January).
Lines that start with an RFC 3339 stamp (rsyslog's precise format) carry their own year and zone.
A line without a stamp (a continuation of a multi-line message) belongs with the line before it.

Rotated files (``messages.0``, ``messages.1``, ... ; a higher number is older, for busybox and
logrotate alike) are read oldest first, then the live file. Compressed rotations are skipped.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, tzinfo
from pathlib import Path
from typing import Iterator, List, Optional

from ..errors import RuntimeFailure
from .timerange import TimeRange

_MONTHS = {name: number for number, name in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), start=1)}
_CLASSIC = re.compile(rb"^([A-Z][a-z]{2}) ([ 0-9]\d) (\d\d):(\d\d):(\d\d)[ \n]")
_RFC3339 = re.compile(rb"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)[ \n]")
_FUTURE_SLACK = timedelta(days=1)


def parse_syslog_stamp(line: bytes, now: datetime, tz: Optional[tzinfo] = None) -> Optional[datetime]:
    """The aware time a syslog line starts with, or None when it has none. ``now`` is aware;
    ``tz`` None means the local zone of this process."""
    match = _CLASSIC.match(line)
    if match is not None:
        month = _MONTHS.get(match.group(1).decode("ascii"))
        if month is None:
            return None
        day, hour, minute, second = (int(match.group(n)) for n in range(2, 6))
        for year in (now.year, now.year - 1):
            try:
                naive = datetime(year, month, day, hour, minute, second)
            except ValueError:  # 29 Feb in a year that has none: try the year before
                continue
            stamp = naive.replace(tzinfo=tz) if tz is not None else naive.astimezone()
            if stamp <= now + _FUTURE_SLACK:
                return stamp
        return None
    match = _RFC3339.match(line)
    if match is not None:
        fraction = (match.group(2) or b"").decode("ascii")[:6].ljust(6, "0")
        zone = match.group(3).decode("ascii")
        text = f"{match.group(1).decode('ascii')}.{fraction}{'+00:00' if zone == 'Z' else zone}"
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            return None
    return None


def _classic_prefix(line: bytes) -> bytes:
    """``Nov 25 10:45:00 `` of a classic line (the whole stamp), else b"" (RFC 3339 stamps differ
    on every line)."""
    return line[:16] if _CLASSIC.match(line) else b""


def rotated_files(path: Path) -> List[Path]:
    """``path``'s rotations oldest first (``name.N`` with the highest N first), then ``path``."""
    numbered = []
    if path.parent.is_dir():
        for candidate in path.parent.iterdir():
            suffix = candidate.name[len(path.name) + 1:]
            if candidate.name.startswith(path.name + ".") and suffix.isdigit() and candidate.is_file():
                numbered.append((int(suffix), candidate))
    return [file for _, file in sorted(numbered, reverse=True)] + [path]


class SyslogFileSource:
    """The lines of a syslog file and its rotations within a time range, streamed line by line."""

    def __init__(self, path: Path, *, tz: Optional[tzinfo] = None) -> None:
        self.path = path
        self._tz = tz

    def describe(self) -> str:
        return str(self.path)

    def lines(self, window: TimeRange, now: datetime) -> Iterator[bytes]:
        files = rotated_files(self.path)
        try:
            self.path.stat()
        except OSError as err:
            raise RuntimeFailure.from_os_error(err, "cannot read the system log") from err
        for file in files:
            yield from self._file_lines(file, window, now, required=file == self.path)

    def _file_lines(self, file: Path, window: TimeRange, now: datetime, *, required: bool) -> Iterator[bytes]:
        try:
            handle = open(file, "rb")
        except OSError as err:
            if not required:
                return  # a rotation removed between listing and opening: its lines moved on
            raise RuntimeFailure.from_os_error(err, "cannot read the system log") from err
        keep = not window.bounded
        # Lines of the same second share their stamp: decide once per prefix (most of the work
        # of a 200 MB read is otherwise parsing the same stamp again, bench/logs.py).
        prefix, prefix_keep = b"", keep
        with handle:
            try:
                for line in handle:
                    if prefix and line.startswith(prefix):
                        keep = prefix_keep
                    else:
                        stamp = parse_syslog_stamp(line, now, self._tz)
                        if stamp is not None:
                            keep = window.contains(stamp)
                            prefix, prefix_keep = _classic_prefix(line), keep
                    if keep:
                        yield line if line.endswith(b"\n") else line + b"\n"
            except OSError as err:
                raise RuntimeFailure.from_os_error(err, "cannot read the system log") from err

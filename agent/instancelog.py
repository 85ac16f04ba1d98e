"""The on-disk format of an instance's recorded output, shared by the launcher and the logs.

One line per line the instance wrote: ``<UTC time> <text>``, the time in RFC 3339 with
microseconds and a ``Z`` (``2026-11-25T10:45:00.123456Z``), stamped when the agent read the line.
The stamp is what lets a log request's ``from``/``till`` and a crash's time range select lines;
plain append-only text keeps the file readable with ``less`` on the board.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Optional, Tuple

_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_STAMP_LENGTH = len("2026-11-25T10:45:00.123456Z")


def format_line(stamp: datetime, text: bytes) -> bytes:
    """One recorded line; ``text`` loses its trailing newline and gets exactly one."""
    utc = stamp.astimezone(timezone.utc)
    return utc.strftime(_FORMAT).encode("ascii") + b" " + text.rstrip(b"\n") + b"\n"


def parse_line(line: bytes) -> Optional[Tuple[datetime, bytes]]:
    """The stamp and text of a recorded line, or None for a line that has no valid stamp
    (a torn write at a power cut, or a file edited by hand): callers skip it."""
    if len(line) <= _STAMP_LENGTH or line[_STAMP_LENGTH:_STAMP_LENGTH + 1] != b" ":
        return None
    try:
        stamp = datetime.strptime(line[:_STAMP_LENGTH].decode("ascii"), _FORMAT)
    except (UnicodeDecodeError, ValueError):
        return None
    return stamp.replace(tzinfo=timezone.utc), line[_STAMP_LENGTH + 1:]

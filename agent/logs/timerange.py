"""A log request's time range, frozen when the request arrives. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Optional

from google.protobuf.timestamp_pb2 import Timestamp

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class TimeRange:
    """``since`` and ``until`` are both inclusive, as in the reference SM (it seeks the journal to
    ``from`` and stops after the first entry later than ``till``); None is open. Times are
    timezone-aware."""

    since: Optional[datetime] = None
    until: Optional[datetime] = None

    def contains(self, stamp: datetime) -> bool:
        return (self.since is None or stamp >= self.since) and (self.until is None or stamp <= self.until)

    @property
    def bounded(self) -> bool:
        return self.since is not None or self.until is not None


def from_timestamp(stamp: Timestamp) -> datetime:
    """Exact to the microsecond (journal and instance-log stamps have microseconds)."""
    return _EPOCH + timedelta(seconds=stamp.seconds, microseconds=stamp.nanos // 1000)


def request_range(since: Optional[Timestamp], until: Optional[Timestamp], now: datetime) -> TimeRange:
    """The range of a log request (``from`` / ``till`` each optional). An open ``till`` becomes
    ``now`` so the two passes over the source (see chunker.py) see the same lines."""
    return TimeRange(
        from_timestamp(since) if since is not None else None,
        from_timestamp(until) if until is not None else now,
    )

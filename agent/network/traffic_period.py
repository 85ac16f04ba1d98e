"""The traffic period (pure: counter readings and the time in, period totals out).

NETWORK.md, "Traffic accounting and limits": download/upload are the bytes accumulated in the
current period, the UTC calendar day; they survive an agent restart within the day and restart
from zero when the day changes.

Theory of operation
-------------------
The kernel keeps monotonic byte counters (nftables named counters) that live as long as their
objects: across agent restarts, not across reboots or a re-created instance. A :class:`Period`
keeps, per key (``NODE`` or an instance id), the bytes counted so far this day (``totals``) and the
kernel value last seen (``seen``). :func:`advance` adds each counter's growth since it was last
seen; a counter below its last value was re-created and counts from zero. When the day of ``now``
differs from the period's, the totals restart at zero: growth seen at the first reading of a new
day cannot be split between the two days and is left to the old one (what the kernel quotas do
too, as the agent resets them at that same reading).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

NODE = ""  # the key of the node's own counters (an instance id is never empty)


@dataclass(frozen=True)
class Bytes:
    download: int = 0
    upload: int = 0

    def __add__(self, other: "Bytes") -> "Bytes":
        return Bytes(self.download + other.download, self.upload + other.upload)


@dataclass(frozen=True)
class Period:
    day: str  # ISO date, UTC
    totals: Mapping[str, Bytes] = field(default_factory=dict)
    seen: Mapping[str, Bytes] = field(default_factory=dict)

    def total(self, key: str) -> Bytes:
        return self.totals.get(key, Bytes())


def utc_day(now: float) -> str:
    """The period ``now`` (seconds since the epoch) falls in."""
    return datetime.datetime.fromtimestamp(now, tz=datetime.timezone.utc).date().isoformat()


def _growth(before: Optional[int], value: int) -> int:
    if before is None or value < before:
        return value  # a new or re-created counter: everything on it is new
    return value - before


def advance(period: Optional[Period], kernel: Mapping[str, Bytes], now: float) -> Tuple[Period, bool]:
    """The period after reading ``kernel`` at ``now``; also whether the day rolled over (the
    caller then resets what the kernel enforces per period: the quotas)."""
    day = utc_day(now)
    if period is None:
        return accumulate(Period(day), kernel), False
    if period.day == day:
        return accumulate(period, kernel), False
    # A new day: every key starts from zero; the growth since the last reading stays with the
    # old day.
    return Period(day, {key: Bytes() for key in kernel}, dict(kernel)), True


def accumulate(period: Period, kernel: Mapping[str, Bytes]) -> Period:
    """Add each counter's growth since last seen to the period's totals (no day change)."""
    totals: Dict[str, Bytes] = dict(period.totals)
    for key, value in kernel.items():
        before = period.seen.get(key)
        growth = Bytes(_growth(before.download if before else None, value.download),
                       _growth(before.upload if before else None, value.upload))
        totals[key] = totals.get(key, Bytes()) + growth
    # Counters that are gone (instance removed) keep their totals for the day (a restarted
    # instance continues its quota) but not their last value.
    return Period(period.day, totals, dict(kernel))


def forget(period: Period, key: str) -> Period:
    """``key``'s kernel counter is about to be re-created: its next value counts from zero."""
    seen = dict(period.seen)
    seen.pop(key, None)
    return Period(period.day, period.totals, seen)


def limit_crossed(total: int, limit: Optional[int]) -> bool:
    """Whether a ``downloadLimit``/``uploadLimit`` is used up (bytes ≥ limit)."""
    return limit is not None and total >= limit


def remaining(total: int, limit: int) -> int:
    return max(0, limit - total)


# --- persistence (JSON), also pure: the caller reads and writes the file ---------------------


def to_json(period: Period) -> Dict[str, Any]:
    return {
        "day": period.day,
        "totals": {key: [value.download, value.upload] for key, value in period.totals.items()},
        "seen": {key: [value.download, value.upload] for key, value in period.seen.items()},
    }


def from_json(data: Any) -> Optional[Period]:
    """The period stored by :func:`to_json`, or None when ``data`` is not one (a torn or foreign
    file starts a fresh period rather than stopping the agent)."""
    if not isinstance(data, dict) or not isinstance(data.get("day"), str):
        return None
    try:
        datetime.date.fromisoformat(data["day"])
        maps = []
        for name in ("totals", "seen"):
            raw = data.get(name, {})
            if not isinstance(raw, dict):
                return None
            maps.append({str(key): Bytes(int(pair[0]), int(pair[1])) for key, pair in raw.items()
                         if isinstance(pair, list) and len(pair) == 2 and min(pair) >= 0})
    except (ValueError, TypeError):
        return None
    return Period(data["day"], maps[0], maps[1])

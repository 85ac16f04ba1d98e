"""Duration parsing for node config ``minTimeout`` and the SM's configuration file.

Three spellings are accepted because CM and the reference configs use all of them
(PROTOCOL.md: "ISO 8601 (`PT1S`), Go-like (`1m30s`) or a number of seconds"):

- ISO 8601 durations: ``PT1S``, ``PT1M30S``, ``P1D``, ``P1W``, ``PT0.5S``. Years and months are
  rejected: they have no fixed length, and a timeout must not depend on the calendar.
- Go ``time.ParseDuration`` syntax: ``100ms``, ``1.5s``, ``1m30s``, ``2h45m``, ``500us``,
  ``10ns``, bare ``0``. Units ns, us, µs, ms, s, m, h, as in Go.
- A non-negative number of seconds, as an int, a float, or a numeric string (``"1.5"``).

Results are :class:`datetime.timedelta`, whose resolution is one microsecond: sub-microsecond
values round to the nearest microsecond (``10ns`` is zero). Negative, infinite or unparseable
values raise :class:`InvalidArgument` naming the value.
"""

from __future__ import annotations

import datetime
import math
import re
from fractions import Fraction
from typing import Union

from .errors import InvalidArgument

DurationValue = Union[str, int, float]

_NUMBER = r"(?:\d+(?:[.,]\d*)?|[.,]\d+)"

# ISO 8601 "PnW" or "PnDTnHnMnS"; each part optional but at least one required (checked below).
_ISO_RE = re.compile(
    rf"""
    P
    (?:(?P<weeks>{_NUMBER})W)?
    (?:(?P<days>{_NUMBER})D)?
    (?:T
        (?:(?P<hours>{_NUMBER})H)?
        (?:(?P<minutes>{_NUMBER})M)?
        (?:(?P<seconds>{_NUMBER})S)?
    )?
    """,
    re.VERBOSE | re.IGNORECASE,
)
# Y, or M before the T, names a calendar unit.
_ISO_CALENDAR_RE = re.compile(r"P[^T]*[YM]", re.IGNORECASE)
_ISO_UNIT_SECONDS = {"weeks": 604800, "days": 86400, "hours": 3600, "minutes": 60, "seconds": 1}

# Go's units (src/time/format.go, unitMap); "µs" is U+00B5, "μs" U+03BC: Go accepts both.
_GO_UNIT_SECONDS = {
    "ns": Fraction(1, 10**9),
    "us": Fraction(1, 10**6),
    "\u00b5s": Fraction(1, 10**6),
    "\u03bcs": Fraction(1, 10**6),
    "ms": Fraction(1, 1000),
    "s": Fraction(1),
    "m": Fraction(60),
    "h": Fraction(3600),
}
_GO_PART_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_SECONDS_RE = re.compile(r"\+?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")

# timedelta.max is ~2.7e6 years; refuse anything beyond it instead of raising OverflowError.
_MAX_SECONDS = Fraction(int(datetime.timedelta.max.total_seconds()))


def parse_duration(value: DurationValue) -> datetime.timedelta:
    """Parse ``value`` into a non-negative timedelta; raise InvalidArgument naming it otherwise."""
    if isinstance(value, bool):
        raise InvalidArgument(f"invalid duration {value!r}: expected a string or a number")
    if isinstance(value, (int, float)):
        return _from_seconds(value, value)
    if not isinstance(value, str):
        raise InvalidArgument(f"invalid duration {value!r}: expected a string or a number")
    text = value.strip()
    if not text:
        raise InvalidArgument("invalid duration '': empty")
    if text.startswith("-"):
        raise InvalidArgument(f"invalid duration {value!r}: negative")
    if _SECONDS_RE.fullmatch(text):
        return _from_seconds(float(text), value)
    if text[0] in "Pp":
        return _to_timedelta(_parse_iso(text, value), value)
    return _to_timedelta(_parse_go(text, value), value)


def _from_seconds(seconds: float, original: DurationValue) -> datetime.timedelta:
    if not math.isfinite(seconds):
        raise InvalidArgument(f"invalid duration {original!r}: not finite")
    if seconds < 0:
        raise InvalidArgument(f"invalid duration {original!r}: negative")
    return _to_timedelta(Fraction(seconds), original)


def _to_timedelta(seconds: Fraction, original: DurationValue) -> datetime.timedelta:
    if seconds > _MAX_SECONDS:
        raise InvalidArgument(f"invalid duration {original!r}: too large")
    return datetime.timedelta(microseconds=round(seconds * 10**6))


def _parse_iso(text: str, original: str) -> Fraction:
    match = _ISO_RE.fullmatch(text)
    if match is None:
        if _ISO_CALENDAR_RE.match(text):
            raise InvalidArgument(
                f"invalid duration {original!r}: years and months have no fixed length"
            )
        raise InvalidArgument(f"invalid duration {original!r}: not an ISO 8601 duration")
    parts = {name: number for name, number in match.groupdict().items() if number is not None}
    if not parts or text.upper().endswith("T"):
        raise InvalidArgument(f"invalid duration {original!r}: no components")
    total = Fraction(0)
    for name, number in parts.items():
        # ISO 8601 allows a comma as the decimal sign.
        total += Fraction(number.replace(",", ".")) * _ISO_UNIT_SECONDS[name]
    return total


def _parse_go(text: str, original: str) -> Fraction:
    if text.startswith("+"):
        text = text[1:]
    total = Fraction(0)
    position = 0
    while position < len(text):
        match = _GO_PART_RE.match(text, position)
        if match is None:
            raise InvalidArgument(
                f"invalid duration {original!r}: expected e.g. PT1S, 1m30s, 100ms or seconds"
            )
        number, unit = match.groups()
        total += Fraction(number) * _GO_UNIT_SECONDS[unit]
        position = match.end()
    return total

"""parse_duration: every spelling PROTOCOL.md allows, and the rejections."""

from __future__ import annotations

import datetime

import pytest

from aos_sm.agent.durations import parse_duration
from aos_sm.agent.errors import AosCode, InvalidArgument

td = datetime.timedelta


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # ISO 8601
        ("PT1S", td(seconds=1)),
        ("PT1M30S", td(seconds=90)),
        ("P1D", td(days=1)),
        ("PT0.5S", td(milliseconds=500)),
        ("PT0,5S", td(milliseconds=500)),
        ("P1DT2H", td(days=1, hours=2)),
        ("P2W", td(days=14)),
        ("pt2s", td(seconds=2)),
        ("PT0S", td(0)),
        # Go-like
        ("100ms", td(milliseconds=100)),
        ("1.5s", td(seconds=1.5)),
        ("1m30s", td(seconds=90)),
        ("1h", td(hours=1)),
        ("2h45m", td(hours=2, minutes=45)),
        ("500us", td(microseconds=500)),
        ("500\u00b5s", td(microseconds=500)),
        ("1500ns", td(microseconds=2)),
        ("10ns", td(0)),
        ("0", td(0)),
        # seconds
        (5, td(seconds=5)),
        (0, td(0)),
        (0.25, td(milliseconds=250)),
        ("1.5", td(seconds=1.5)),
        ("30", td(seconds=30)),
        (" 10s ", td(seconds=10)),
    ],
)
def test_accepted(value: str | int | float, expected: datetime.timedelta) -> None:
    assert parse_duration(value) == expected


@pytest.mark.parametrize(
    "value",
    ["-1s", "-PT1S", -1, -0.5, "-3", "", "   ", "abc", "1h30", "1x", "s", "PT", "P", "P1DT",
     "P1M", "P1Y", "PT1H1S1M", "1s2", float("nan"), float("inf"), "1e400", "9" * 30 + "h", True],
)
def test_rejected_with_invalid_argument_naming_the_value(value: object) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_duration(value)  # type: ignore[arg-type]
    assert caught.value.aos_code == AosCode.INVALID_ARGUMENT
    assert repr(value) in str(caught.value) or (value in ("", "   ") and "''" in str(caught.value))


def test_calendar_units_explain_why() -> None:
    with pytest.raises(InvalidArgument, match="no fixed length"):
        parse_duration("P1M")

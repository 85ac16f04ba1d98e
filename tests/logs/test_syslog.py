"""Syslog stamps (no year in classic lines) and rotated files, over real files."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from aos_sm.agent.logs.syslog import SyslogFileSource, parse_syslog_stamp, rotated_files
from aos_sm.agent.logs.timerange import TimeRange

UTC = timezone.utc
NOW = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)


def test_a_classic_stamp_takes_this_year() -> None:
    stamp = parse_syslog_stamp(b"Nov 25 10:45:01 node user.info app: hello\n", NOW, UTC)
    assert stamp == datetime(2026, 11, 25, 10, 45, 1, tzinfo=UTC)
    assert parse_syslog_stamp(b"Nov  5 01:02:03 node kern.warn kernel: x\n", NOW, UTC) == datetime(
        2026, 11, 5, 1, 2, 3, tzinfo=UTC)


def test_a_classic_stamp_more_than_a_day_ahead_was_written_last_year() -> None:
    january = datetime(2027, 1, 2, 0, 0, tzinfo=UTC)
    assert parse_syslog_stamp(b"Dec 31 23:59:59 node x: y\n", january, UTC) == datetime(
        2026, 12, 31, 23, 59, 59, tzinfo=UTC)
    # Within a day ahead (a clock a little behind the writer's) stays this year.
    assert parse_syslog_stamp(b"Jan  2 12:00:00 node x: y\n", january, UTC) == datetime(
        2027, 1, 2, 12, 0, tzinfo=UTC)


def test_a_classic_stamp_is_read_in_the_given_zone() -> None:
    plus_two = timezone(timedelta(hours=2))
    stamp = parse_syslog_stamp(b"Nov 25 10:45:01 node x: y\n", NOW, plus_two)
    assert stamp == datetime(2026, 11, 25, 8, 45, 1, tzinfo=UTC)


def test_rfc3339_stamps_carry_their_own_year_and_zone() -> None:
    assert parse_syslog_stamp(b"2025-03-01T10:00:00.25+01:00 node app: x\n", NOW) == datetime(
        2025, 3, 1, 9, 0, 0, 250000, tzinfo=UTC)
    assert parse_syslog_stamp(b"2025-03-01T10:00:00Z node app: x\n", NOW) == datetime(2025, 3, 1, 10, tzinfo=UTC)


def test_lines_without_a_stamp_are_none() -> None:
    assert parse_syslog_stamp(b"  continuation of a message\n", NOW, UTC) is None
    assert parse_syslog_stamp(b"Foo 25 10:45:01 node x\n", NOW, UTC) is None


def test_rotations_are_read_oldest_first_then_the_live_file(tmp_path: Path) -> None:
    live = tmp_path / "messages"
    (tmp_path / "messages.1").write_bytes(b"Nov 25 09:00:00 n a: oldest\n")
    (tmp_path / "messages.0").write_bytes(b"Nov 25 10:00:00 n a: older\n")
    (tmp_path / "messages.0.gz").write_bytes(b"not read")
    live.write_bytes(b"Nov 25 11:00:00 n a: newest\n  continued\nNov 25 11:00:01 n a: last")
    assert [file.name for file in rotated_files(live)] == ["messages.1", "messages.0", "messages"]
    source = SyslogFileSource(live, tz=UTC)
    everything = list(source.lines(TimeRange(), NOW))
    assert everything == [b"Nov 25 09:00:00 n a: oldest\n", b"Nov 25 10:00:00 n a: older\n",
                          b"Nov 25 11:00:00 n a: newest\n", b"  continued\n", b"Nov 25 11:00:01 n a: last\n"]
    # A continuation line goes with the stamped line before it.
    window = TimeRange(datetime(2026, 11, 25, 10, 30, tzinfo=UTC), datetime(2026, 11, 25, 11, 0, tzinfo=UTC))
    assert list(source.lines(window, NOW)) == [b"Nov 25 11:00:00 n a: newest\n", b"  continued\n"]

from datetime import datetime, timedelta, timezone

from aos_sm.agent import instancelog
from aos_sm.agent.ports import InstanceKey
from aos_sm.proto.common.v2 import common_pb2


def test_line_round_trips_with_utc_stamp() -> None:
    stamp = datetime(2026, 11, 25, 12, 0, 1, 250000, tzinfo=timezone(timedelta(hours=2)))
    line = instancelog.format_line(stamp, b"hello world\n")
    assert line == b"2026-11-25T10:00:01.250000Z hello world\n"
    parsed = instancelog.parse_line(line)
    assert parsed is not None
    assert parsed[0] == stamp
    assert parsed[1] == b"hello world\n"


def test_torn_or_foreign_lines_are_skipped() -> None:
    assert instancelog.parse_line(b"2026-11-25T10:00:01.25") is None
    assert instancelog.parse_line(b"not a stamp at all, just text here\n") is None
    assert instancelog.parse_line(b"2026-13-25T10:00:01.250000Z month 13\n") is None


def test_instance_key_filter_rules() -> None:
    key = InstanceKey("item", "subject", 2)
    assert key.to_ident() == common_pb2.InstanceIdent(item_id="item", subject_id="subject", instance=2)
    assert InstanceKey.from_ident(key.to_ident()) == key
    assert key.matches(common_pb2.InstanceFilter(instance=-1))
    assert key.matches(common_pb2.InstanceFilter(item_id="item", instance=2))
    assert not key.matches(common_pb2.InstanceFilter(item_id="other", instance=-1))
    assert not key.matches(common_pb2.InstanceFilter(subject_id="other", instance=-1))
    assert not key.matches(common_pb2.InstanceFilter(instance=0))

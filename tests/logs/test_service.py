"""LogService over real files: a syslog file and instance logs written by the test in their real
formats; replies recorded from the service's own worker threads."""

from __future__ import annotations

import gzip
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

import pytest

from log_helpers import RecordingSender, assert_ok_parts, one_status, stamp

from aos_sm.agent.instancelog import format_line
from aos_sm.agent.logs.service import LogService, NoInstanceLogs
from aos_sm.agent.logs.syslog import SyslogFileSource
from aos_sm.agent.logs.timerange import TimeRange
from aos_sm.agent.ports import CrashRecord, InstanceKey, InstanceLogFile
from aos_sm.proto.common.v2 import common_pb2
from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

UTC = timezone.utc
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
BASE = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
RUNTIME, OUT_OF_RANGE = 2, 4


def syslog_line(second: int, n: int) -> bytes:
    when = BASE + timedelta(seconds=second)
    return when.strftime("%b %d %H:%M:%S").encode() + b" node app[42]: second %d line %d %s\n" % (
        second, n, b"x" * 40)


@pytest.fixture
def messages(tmp_path: Path) -> Path:
    """A syslog file: 60 seconds, 5 lines in each."""
    path = tmp_path / "messages"
    path.write_bytes(b"".join(syslog_line(second, n) for second in range(60) for n in range(5)))
    return path


def expected(first: int, last: int) -> bytes:
    return b"".join(syslog_line(second, n) for second in range(first, last + 1) for n in range(5))


class FakeInstances:
    """Stands in for the launcher (not in this branch) behind InstanceLogSourcePort."""

    def __init__(self, logs: Sequence[InstanceLogFile] = (), crashes: Sequence[CrashRecord] = ()) -> None:
        self.logs = list(logs)
        self.crash_records = list(crashes)

    def instance_logs(self) -> Sequence[InstanceLogFile]:
        return self.logs

    def crashes(self) -> Sequence[CrashRecord]:
        return self.crash_records


def make_service(sender: RecordingSender, path: Path, *, size: int = 1024, count: int = 80,
                 instances: Optional[FakeInstances] = None) -> LogService:
    return LogService(sender, system_log=SyslogFileSource(path, tz=UTC), instances=instances or NoInstanceLogs(),
                      max_part_size=size, max_part_count=count, clock=lambda: NOW)


def system_request(correlation_id: str, since: Optional[datetime] = None,
                   until: Optional[datetime] = None) -> sm_pb2.SystemLogRequest:
    request = sm_pb2.SystemLogRequest(correlation_id=correlation_id)
    if since is not None:
        getattr(request, "from").CopyFrom(stamp(since))
    if until is not None:
        request.till.CopyFrom(stamp(until))
    return request


def test_the_range_is_inclusive_at_both_ends_and_parts_carry_exactly_those_lines(messages: Path) -> None:
    sender = RecordingSender()
    service = make_service(sender, messages)
    at = lambda second, micro=0: BASE + timedelta(seconds=second, microseconds=micro)  # noqa: E731
    service.system_log(system_request("both-edges", at(10), at(20)))
    service.system_log(system_request("inside-edges", at(10, 1), at(20, -1)))
    service.system_log(system_request("open-start", None, at(3)))
    service.system_log(system_request("open-end", at(57), None))
    assert assert_ok_parts(sender.wait_reply("both-edges"), 1024) == expected(10, 20)
    assert assert_ok_parts(sender.wait_reply("inside-edges"), 1024) == expected(11, 19)
    assert assert_ok_parts(sender.wait_reply("open-start"), 1024) == expected(0, 3)
    assert assert_ok_parts(sender.wait_reply("open-end"), 1024) == expected(57, 59)
    assert len(sender.parts("both-edges")) > 3  # several parts, so numbering was exercised
    service.close()


def test_a_range_with_no_lines_is_one_empty_part(messages: Path) -> None:
    sender = RecordingSender()
    service = make_service(sender, messages)
    service.system_log(system_request("none", BASE + timedelta(hours=1), BASE + timedelta(hours=2)))
    assert one_status(sender.wait_reply("none")) == {
        "status": "empty", "part": 1, "part_count": 1, "code": 0, "message": "", "has_error": True}


def test_a_missing_or_unreadable_system_log_is_one_error_with_the_reason(tmp_path: Path) -> None:
    sender = RecordingSender()
    make_service(sender, tmp_path / "gone").system_log(system_request("missing"))
    reply = one_status(sender.wait_reply("missing"))
    assert (reply["status"], reply["part"], reply["part_count"], reply["code"]) == ("error", 0, 0, RUNTIME)
    assert "No such file" in str(reply["message"]) and "gone" in str(reply["message"])
    (tmp_path / "dir").mkdir()
    make_service(sender, tmp_path / "dir").system_log(system_request("a-directory"))
    reply = one_status(sender.wait_reply("a-directory"))
    assert (reply["status"], reply["code"]) == ("error", RUNTIME)
    assert "directory" in str(reply["message"]).lower()


def test_more_parts_than_max_part_count_is_one_error_saying_so(messages: Path) -> None:
    sender = RecordingSender()
    make_service(sender, messages, size=1024, count=3).system_log(system_request("too-big"))
    reply = one_status(sender.wait_reply("too-big"))
    assert (reply["status"], reply["part"], reply["part_count"], reply["code"]) == ("error", 0, 0, OUT_OF_RANGE)
    assert "maxPartCount" in str(reply["message"])


def write_instance_log(path: Path, seconds: range, name: str) -> bytes:
    lines = b"".join(format_line(BASE + timedelta(seconds=s), b"%s output %d" % (name.encode(), s)) for s in seconds)
    path.write_bytes(lines + b"torn line without a stamp\n")
    return lines


def lines_between(text: bytes, first: int, last: int) -> bytes:
    return b"".join(line for line in text.splitlines(keepends=True)
                    if first <= int(line.rsplit(b" ", 1)[1]) <= last)


def test_instance_logs_follow_the_filter_and_the_range(tmp_path: Path, messages: Path) -> None:
    one, two = InstanceKey("service1", "subject1", 0), InstanceKey("service1", "subject1", 1)
    text_one = write_instance_log(tmp_path / "one.log", range(30), "one")
    text_two = write_instance_log(tmp_path / "two.log", range(30), "two")
    instances = FakeInstances([InstanceLogFile(one, tmp_path / "one.log", "aos-sm/one"),
                               InstanceLogFile(two, tmp_path / "two.log", "aos-sm/two")])
    sender = RecordingSender()
    service = make_service(sender, messages, instances=instances)

    def request(correlation_id: str, instance: int, item: str = "service1") -> sm_pb2.InstanceLogRequest:
        request = sm_pb2.InstanceLogRequest(correlation_id=correlation_id, filter=common_pb2.InstanceFilter(
            item_id=item, instance=instance))
        getattr(request, "from").CopyFrom(stamp(BASE + timedelta(seconds=5)))
        request.till.CopyFrom(stamp(BASE + timedelta(seconds=9)))
        return request

    service.instance_log(request("one", 0))
    service.instance_log(request("any", -1))
    service.instance_log(request("unknown", 0, item="service9"))
    assert assert_ok_parts(sender.wait_reply("one"), 1024) == lines_between(text_one, 5, 9)
    assert assert_ok_parts(sender.wait_reply("any"), 1024) == (
        b"--- instance service1/subject1/0\n" + lines_between(text_one, 5, 9)
        + b"--- instance service1/subject1/1\n" + lines_between(text_two, 5, 9))
    absent = one_status(sender.wait_reply("unknown"))
    assert (absent["status"], absent["part_count"], absent["code"]) == ("absent", 1, 0)
    assert absent["message"] == "no service instance found"  # the reference's words


def test_crash_logs_are_the_lines_of_each_crashed_run_in_the_range(tmp_path: Path, messages: Path) -> None:
    key = InstanceKey("service1", "subject1", 0)
    text = write_instance_log(tmp_path / "one.log", range(60), "one")
    at = lambda second: BASE + timedelta(seconds=second)  # noqa: E731
    crashes = [CrashRecord(key, tmp_path / "one.log", at(0), at(9), "exit code 1"),
               CrashRecord(key, tmp_path / "one.log", at(20), at(29), "killed by signal 9"),
               CrashRecord(key, tmp_path / "one.log", at(40), at(59), "exit code 2")]
    sender = RecordingSender()
    service = make_service(sender, messages, instances=FakeInstances(crashes=crashes))
    request = sm_pb2.InstanceCrashLogRequest(correlation_id="crash", filter=common_pb2.InstanceFilter(instance=-1))
    getattr(request, "from").CopyFrom(stamp(at(9)))
    request.till.CopyFrom(stamp(at(29)))
    service.crash_log(request)
    content = assert_ok_parts(sender.wait_reply("crash"), 1024)
    assert content == (
        b"--- crash of instance service1/subject1/0 at 2026-11-25T10:00:09.000000Z: exit code 1\n"
        + lines_between(text, 0, 9)
        + b"--- crash of instance service1/subject1/0 at 2026-11-25T10:00:29.000000Z: killed by signal 9\n"
        + lines_between(text, 20, 29))
    none = sm_pb2.InstanceCrashLogRequest(correlation_id="no-crash",
                                          filter=common_pb2.InstanceFilter(item_id="service2", instance=-1))
    service.crash_log(none)
    absent = one_status(sender.wait_reply("no-crash"))
    assert (absent["status"], absent["code"], absent["message"]) == ("absent", 0, "no instance crash found")


def test_an_unreadable_instance_log_is_one_error(tmp_path: Path, messages: Path) -> None:
    (tmp_path / "a-directory.log").mkdir()
    key = InstanceKey("service1", "subject1", 0)
    sender = RecordingSender()
    service = make_service(sender, messages, instances=FakeInstances(
        [InstanceLogFile(key, tmp_path / "a-directory.log")]))
    service.instance_log(sm_pb2.InstanceLogRequest(correlation_id="bad", filter=common_pb2.InstanceFilter(instance=-1)))
    reply = one_status(sender.wait_reply("bad"))
    assert (reply["status"], reply["code"]) == ("error", RUNTIME)
    assert "a-directory.log" in str(reply["message"])


class GatedSource:
    """A system log whose reads wait on a gate, to show a slow request does not hold up others."""

    def __init__(self, path: Path) -> None:
        self.inner = SyslogFileSource(path, tz=UTC)
        self.gate = threading.Event()

    def describe(self) -> str:
        return "gated"

    def lines(self, window: TimeRange, now: datetime) -> Iterator[bytes]:
        if window.since is not None and window.since.minute == 0 and window.since.second == 0:
            assert self.gate.wait(30)
        return self.inner.lines(window, now)


def test_requests_run_concurrently_and_each_reply_has_its_own_correlation_id(messages: Path) -> None:
    sender = RecordingSender()
    source = GatedSource(messages)
    service = LogService(sender, system_log=source, instances=NoInstanceLogs(), max_part_size=1024,
                         max_part_count=80, clock=lambda: NOW)
    service.system_log(system_request("slow", BASE, BASE + timedelta(seconds=1)))  # waits on the gate
    service.system_log(system_request("fast", BASE + timedelta(seconds=30), BASE + timedelta(seconds=31)))
    assert assert_ok_parts(sender.wait_reply("fast"), 1024) == expected(30, 31)
    assert sender.parts("slow") == []
    source.gate.set()
    assert assert_ok_parts(sender.wait_reply("slow"), 1024) == expected(0, 1)
    service.close()


def test_big_parts_compress(messages: Path) -> None:
    sender = RecordingSender()
    make_service(sender, messages, size=64 * 1024).system_log(system_request("all"))
    parts: List[sm_pb2.LogData] = sender.wait_reply("all")
    assert assert_ok_parts(parts, 64 * 1024) == expected(0, 59)
    assert sum(len(p.data) for p in parts) < len(expected(0, 59)) // 2
    assert gzip.decompress(parts[0].data).startswith(b"Nov 25 10:00:00")


def test_streaming_stops_when_cm_disconnects(messages: Path) -> None:
    class DroppingSender(RecordingSender):
        """Goes offline after the first part, as the Outbox does when the session ends."""

        live = True

        def send(self, message: sm_pb2.SMOutgoingMessages) -> None:
            super().send(message)
            self.live = False

    sender = DroppingSender()
    service = make_service(sender, messages)
    service.system_log(system_request("gone"))
    service.close(wait=True)
    parts = sender.parts("gone")
    assert [(p.part, p.status) for p in parts] == [(1, "ok")]
    assert parts[0].part_count > 1

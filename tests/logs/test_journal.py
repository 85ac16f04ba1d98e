"""The journal as the system log and as the source of alerts, over a real journald (conftest.py)."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any, Dict

from log_helpers import NamespacedJournal, RecordingSender, assert_ok_parts, one_status, stamp

from aos_sm.agent.config import JournalAlertsConfig
from aos_sm.agent.logs.alerts import AlertRules, JournalAlerts
from aos_sm.agent.logs.journal import JournalSource, entry_time, format_entry
from aos_sm.agent.logs.service import LogService, NoInstanceLogs, utc_now
from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2


def _line(entry: Dict[str, Any]) -> bytes:
    formatted = format_entry(entry)
    assert formatted is not None
    return formatted[1]


def test_journal_entries_in_the_range_inclusive_at_both_ends(journal: NamespacedJournal) -> None:
    texts = [f"entry {n}" for n in range(6)]
    for text in texts:
        journal.send(text)
    entries = journal.wait_for_messages(texts)
    times = [entry_time(entry) for entry in entries]
    assert all(t is not None for t in times) and times == sorted(times)  # type: ignore[type-var]
    sender = RecordingSender()
    service = LogService(sender, system_log=JournalSource(directory=journal.directory), instances=NoInstanceLogs(),
                         max_part_size=1024, max_part_count=80)

    def request(correlation_id: str, since: Any, until: Any) -> sm_pb2.SystemLogRequest:
        message = sm_pb2.SystemLogRequest(correlation_id=correlation_id)
        getattr(message, "from").CopyFrom(stamp(since))
        message.till.CopyFrom(stamp(until))
        return message

    micro = timedelta(microseconds=1)
    service.system_log(request("edges", times[1], times[4]))
    service.system_log(request("inside", times[1] + micro, times[4] - micro))  # type: ignore[operator]
    service.system_log(request("later", times[5] + micro, times[5] + timedelta(hours=1)))  # type: ignore[operator]
    edges = assert_ok_parts(sender.wait_reply("edges"), 1024)
    assert edges == b"".join(_line(entry) for entry in entries[1:5])
    assert b"aos-test[" in edges and b": entry 1\n" in edges and b": entry 4\n" in edges
    assert assert_ok_parts(sender.wait_reply("inside"), 1024) == b"".join(_line(e) for e in entries[2:4])
    assert one_status(sender.wait_reply("later"))["status"] == "empty"
    service.close()


def test_an_unreadable_journal_directory_is_one_error(journal: NamespacedJournal) -> None:
    sender = RecordingSender()
    service = LogService(sender, system_log=JournalSource(directory=journal.directory / "missing"),
                         instances=NoInstanceLogs(), max_part_size=1024, max_part_count=80)
    service.system_log(sm_pb2.SystemLogRequest(correlation_id="bad"))
    reply = one_status(sender.wait_reply("bad"))
    assert (reply["status"], reply["part"], reply["code"]) == ("error", 0, 2)
    assert "journalctl failed" in str(reply["message"]) and "missing" in str(reply["message"])


def test_severe_entries_become_alerts_minus_the_filtered_ones(journal: NamespacedJournal) -> None:
    journal.send("warm up")
    journal.wait_for_messages(["warm up"])
    sender = RecordingSender()
    config = JournalAlertsConfig(filters=("^noise",), system_alert_priority=3, service_alert_priority=4)
    follower = JournalAlerts(sender, AlertRules.build(config, os.getpid()), NoInstanceLogs(),
                             directory=journal.directory, retry_delay=0.2)
    started = utc_now()
    follower.start()
    try:
        journal.send("just information", priority=6)
        journal.send("noise the filter drops", priority=2)
        journal.send("the agent failed", priority=3)
        journal.send_from_another_process("disk on fire", priority=2)
        alerts: list = []

        def received() -> bool:
            alerts[:] = [m.alert for m in sender.messages if m.WhichOneof("SMOutgoingMessage") == "alert"]
            return len(alerts) >= 2

        with sender._done:  # noqa: SLF001 - the recording sender's condition
            assert sender._done.wait_for(received, 30), sender.messages
        kinds = sorted((a.WhichOneof("AlertItem"), a.core_alert.message or a.system_alert.message) for a in alerts)
        assert kinds == [("core_alert", "the agent failed"), ("system_alert", "disk on fire")]
        assert all(a.timestamp.seconds >= int(started.timestamp()) for a in alerts)
        assert [a.core_alert.core_component for a in alerts if a.HasField("core_alert")] == ["SM"]
    finally:
        assert follower.stop(10)

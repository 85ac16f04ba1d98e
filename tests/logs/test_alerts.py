"""The journal entry -> alert mapping, over entries shaped as ``journalctl -o json`` writes them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

from aos_sm.agent.config import JournalAlertsConfig
from aos_sm.agent.logs.alerts import AlertRules, journal_alert
from aos_sm.agent.logs.journal import field_text, format_entry
from aos_sm.agent.ports import InstanceKey, InstanceLogFile

# Trimmed from real `journalctl -o json` output of systemd 252.
ENTRY = json.loads(
    '{"__CURSOR":"s=dc2a;i=3;b=4eec;m=8b342028;t=661179384f411;x=d1f8","__REALTIME_TIMESTAMP":"1795603747370001",'
    '"__MONOTONIC_TIMESTAMP":"2335449128","_BOOT_ID":"4eec6cffb2564836ae81dfd5a7ad3821","PRIORITY":"3",'
    '"_TRANSPORT":"journal","_UID":"0","_GID":"0","SYSLOG_IDENTIFIER":"app","_COMM":"app","_PID":"2723",'
    '"_SYSTEMD_CGROUP":"/system.slice/nginx.service","_SYSTEMD_UNIT":"nginx.service","MESSAGE":"upstream down"}')
INSTANCE = InstanceLogFile(InstanceKey("service1", "subject1", 2), Path("/var/aos/logs/s1.log"), "aos-sm/service1-2")
RULES = AlertRules.build(JournalAlertsConfig(filters=("^ignored", "mount .* busy"), system_alert_priority=3,
                                             service_alert_priority=4), own_pid=999)


def entry(**fields: Any) -> Dict[str, Any]:
    return {**ENTRY, **fields}


def kind(alert: Optional[Any]) -> Optional[str]:
    return None if alert is None else alert.WhichOneof("AlertItem")


def test_a_system_entry_at_or_above_the_priority_is_a_system_alert() -> None:
    alert = journal_alert(entry(), RULES, [INSTANCE])
    assert kind(alert) == "system_alert" and alert is not None
    assert alert.system_alert.message == "upstream down"
    assert (alert.timestamp.seconds, alert.timestamp.nanos) == (1795603747, 370001000)
    assert kind(journal_alert(entry(PRIORITY="0"), RULES, [])) == "system_alert"
    assert journal_alert(entry(PRIORITY="4"), RULES, []) is None
    assert journal_alert(entry(PRIORITY="6"), RULES, []) is None
    assert journal_alert({k: v for k, v in ENTRY.items() if k != "PRIORITY"}, RULES, []) is None


def test_an_instance_entry_is_an_instance_alert_at_the_service_priority() -> None:
    cgroup = "/aos-sm/service1-2/payload"
    alert = journal_alert(entry(PRIORITY="4", _SYSTEMD_CGROUP=cgroup, _SYSTEMD_UNIT=""), RULES, [INSTANCE])
    assert kind(alert) == "instance_alert" and alert is not None
    assert (alert.instance_alert.instance.item_id, alert.instance_alert.instance.instance) == ("service1", 2)
    assert alert.instance_alert.message == "upstream down"
    by_unit = entry(_SYSTEMD_CGROUP="/system.slice/x", _SYSTEMD_UNIT="aos-sm/service1-2.scope")
    assert kind(journal_alert(by_unit, RULES, [INSTANCE])) == "instance_alert"
    assert journal_alert(entry(PRIORITY="5", _SYSTEMD_CGROUP=cgroup), RULES, [INSTANCE]) is None
    # An instance's warning is not a system alert either.
    assert journal_alert(entry(PRIORITY="4", _SYSTEMD_CGROUP=cgroup), RULES, []) is None


def test_the_agent_and_aos_core_units_raise_core_alerts() -> None:
    own = journal_alert(entry(_PID="999"), RULES, [])
    assert kind(own) == "core_alert" and own is not None and own.core_alert.core_component == "SM"
    cm = journal_alert(entry(_SYSTEMD_UNIT="aos-communicationmanager.service"), RULES, [])
    assert cm is not None and cm.core_alert.core_component == "CM"
    assert journal_alert(entry(_PID="999", PRIORITY="4"), RULES, []) is None


def test_messages_matching_a_filter_raise_nothing() -> None:
    assert journal_alert(entry(MESSAGE="ignored: all of this"), RULES, []) is None
    assert journal_alert(entry(MESSAGE="umount: mount /data busy"), RULES, []) is None
    assert journal_alert(entry(MESSAGE="not ignored"), RULES, []) is not None


def test_binary_fields_and_entry_lines() -> None:
    # journalctl writes a field that is not valid UTF-8 as a list of byte values.
    binary = entry(MESSAGE=[104, 105, 255, 10])
    assert field_text(binary["MESSAGE"]) == "hi\ufffd\n"
    formatted = format_entry(entry(MESSAGE="two\nlines"))
    assert formatted is not None
    assert formatted[1] == b"2026-11-25T10:49:07.370001Z app[2723]: two\n  lines\n"
    assert format_entry({"MESSAGE": "no time"}) is None

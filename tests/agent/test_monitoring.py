"""Monitoring against the real contract CM: InstantMonitoring every poll, AverageMonitoring on
request, and system quota alerts from the node config that raise and fall."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, List

import pytest

from agent_helpers import registered
from contract_cm import CMSession, ContractCM, kind_of

from aos_sm.agent.app import Agent

POLL = 0.3


def node_config(version: str, ram: dict[str, Any]) -> dict[str, str]:
    text = json.dumps({"version": version, "nodeGroupSubject": {"codename": "main"}, "alertRules": {"ram": ram}})
    return {"nodeConfig": text, "version": version}


def index_of(session: CMSession, message: Any) -> int:
    """Where ``message`` (an inner message wait_for returned) sits in the session's stream."""
    for index, outer in enumerate(session.received):
        if kind_of(outer) and getattr(outer, kind_of(outer)) is message:
            return index
    raise AssertionError("message not in the stream")


def polls_between(session: CMSession, start: int, end: int) -> int:
    return session.kinds()[start:end].count("instant_monitoring")


def is_ram(status: str) -> Callable[[Any], bool]:
    return lambda alert: alert.WhichOneof("AlertItem") == "system_quota_alert" and (
        alert.system_quota_alert.parameter, alert.system_quota_alert.status) == ("ram", status)


def test_instant_average_and_a_ram_rule_that_raises_then_falls(
    contract_cm: ContractCM, start_agent: Callable[..., Agent], busy_process: subprocess.Popen[bytes]
) -> None:
    agent = start_agent(contract_cm.address, monitoring={"pollPeriod": f"{int(POLL * 1000)}ms", "averageWindow": "3s"})
    session = registered(contract_cm)
    max_dmips = agent.capacity.max_dmips
    assert max_dmips > 0
    if session.messages("sm_info")[0].runtimes:
        assert session.messages("sm_info")[0].runtimes[0].max_dmips == max_dmips

    samples = [session.wait_for("instant_monitoring", timeout=10) for _ in range(4)]
    stamps = [s.node_monitoring.timestamp.ToNanoseconds() for s in samples]
    assert stamps == sorted(set(stamps))
    for sample in samples[1:]:  # the first poll may cover time before the busy process ran
        node = sample.node_monitoring
        assert node.ram > 0 and 0 < node.cpu <= max_dmips
        assert [p.name for p in node.partitions] == ["workingDir"] and node.partitions[0].used_size > 0

    session.send("get_average_monitoring", {})
    average = session.wait_for("average_monitoring", timeout=1.0)  # PROTOCOL.md: within 1 s
    node = average.node_monitoring
    assert node.timestamp.seconds > 0 and node.ram > 0 and 0 < node.cpu <= max_dmips

    # A ram rule at a quarter of what the node uses: raised within two polls of the reply.
    used_percent = 100.0 * samples[-1].node_monitoring.ram / agent.capacity.total_ram
    low = {"minTimeout": "0s", "minThreshold": used_percent / 8, "maxThreshold": used_percent / 4}
    session.send("set_node_config", node_config("1.0.0", low))
    reply = session.wait_for("node_config_status", timeout=5)
    assert (reply.version, reply.error.aos_code) == ("1.0.0", 0)
    raised = session.wait_for("alert", timeout=10, predicate=is_ram("raise"))
    assert raised.system_quota_alert.value > agent.capacity.total_ram * used_percent / 400
    assert polls_between(session, index_of(session, reply), index_of(session, raised)) <= 2

    # The rule raised above any usage (a higher version, as the version rule wants): fall.
    session.send("set_node_config", node_config("1.0.1", {"minTimeout": 0, "minThreshold": 99, "maxThreshold": 100}))
    reply = session.wait_for("node_config_status", timeout=5)
    assert (reply.version, reply.error.aos_code) == ("1.0.1", 0)
    fallen = session.wait_for("alert", timeout=10, predicate=is_ram("fall"))
    # T = 0 still takes two samples below min (PROTOCOL.md); one may be a poll already under way.
    assert 2 <= polls_between(session, index_of(session, reply), index_of(session, fallen)) <= 3
    statuses = [a.system_quota_alert.status for a in session.messages("alert")
                if a.WhichOneof("AlertItem") == "system_quota_alert"]
    assert statuses[0] == "raise" and statuses[-1] == "fall" and set(statuses[1:-1]) <= {"continue"}


def test_alerts_raised_while_disconnected_follow_the_next_registration_in_order(
    contract_cm_factory: Callable[..., ContractCM], start_agent: Callable[..., Agent]
) -> None:
    cm = contract_cm_factory()
    port = cm.port
    agent = start_agent(cm.address, monitoring={"pollPeriod": "100ms"})
    registered(cm)
    cm.stop()
    deadline = time.monotonic() + 5
    while agent.outbox.live and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not agent.outbox.live
    # Installed while CM is away (the same service CM's SetNodeConfig uses): raises now, offline.
    low = {"minTimeout": "300ms", "minThreshold": 0.01, "maxThreshold": 0.02}  # of total RAM: any node uses more
    status = agent.node_config.set(node_config("1.0.0", low)["nodeConfig"], "1.0.0")
    assert status.error.aos_code == 0
    offline_since = time.time()
    time.sleep(1.0)  # several polls and at least one raise and continue happen while disconnected
    reconnect_at = time.time()
    restarted = contract_cm_factory(port=port)
    session = registered(restarted, index=0, timeout=15.0)
    is_quota = lambda a: a.WhichOneof("AlertItem") == "system_quota_alert"  # noqa: E731
    kept: List[Any] = [session.wait_for("alert", timeout=5, predicate=is_quota) for _ in range(2)]
    assert session.kinds()[:2] == ["sm_info", "node_instances_status"]
    assert [a.system_quota_alert.status for a in kept] == ["raise", "continue"]
    stamps = [a.timestamp.ToNanoseconds() / 1e9 for a in kept]
    assert offline_since <= stamps[0] <= stamps[1] < reconnect_at  # raised and kept while offline


def test_average_monitoring_right_after_registration_has_a_real_first_sample(
    contract_cm: ContractCM, start_agent: Callable[..., Agent], busy_process: subprocess.Popen[bytes]
) -> None:
    """Issue 16: with the default 35 s poll the first sample used to come one period after start,
    so CM's first GetAverageMonitoring got node RAM 0 and cpu 0. It is now taken at start."""
    agent = start_agent(contract_cm.address)  # default monitoring: pollPeriod 35s
    session = registered(contract_cm)
    session.send("get_average_monitoring", {})
    node = session.wait_for("average_monitoring", timeout=5).node_monitoring
    assert node.timestamp.seconds > 0
    assert 0 < node.ram <= agent.capacity.total_ram
    # A busy process kept one CPU busy over the first sample's span (at least 0.1 s).
    assert 0 < node.cpu <= agent.capacity.max_dmips
    assert [p.name for p in node.partitions] == ["workingDir"] and node.partitions[0].used_size > 0

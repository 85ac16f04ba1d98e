"""Hostile input against the contract CM: a node config gets a NodeConfigStatus with
invalidArgument naming the key and the stored file stays as it was; an UpdateInstances whose
every entry is refused still gets a status per entry and its NodeInstancesStatus; the session
goes on. (A batch mixing good and bad instances on real runc: tests/launcher/test_hostile_instances.py.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict

import pytest

from contract_cm import ContractCM

from agent_helpers import registered

from aos_sm.agent.app import Agent


def config(**overrides: Any) -> str:
    document: Dict[str, Any] = {"nodeGroupSubject": {"codename": "main"}}
    document.update(overrides)
    return json.dumps(document)


RULE = {"minTimeout": "PT1S", "minThreshold": 1}


@pytest.mark.parametrize(("text", "expected"), [
    (config(priority=1e30), "priority: out of range, got 1e+30"),
    (config(alertRules={"download": dict(RULE, maxThreshold=1e30)}),
     "alertRules.download.maxThreshold: out of range, got 1e+30"),
    (config(alertRules={"ram": dict(RULE, maxThreshold=250)}), "alertRules.ram.maxThreshold: a percent is at most 100"),
])
def test_a_hostile_node_config_is_refused_and_nothing_is_stored(
    contract_cm: ContractCM, start_agent: Callable[..., Agent], tmp_path: Path, text: str, expected: str
) -> None:
    agent = start_agent(contract_cm.address)
    session = registered(contract_cm)
    session.send("set_node_config", {"nodeConfig": config(), "version": "1.0.0"})
    assert session.wait_for("node_config_status").error.aos_code == 0
    stored = agent.config.node_config_file
    before = stored.read_bytes()

    for kind in ("check_node_config", "set_node_config"):
        session.send(kind, {"nodeConfig": text, "version": "2.0.0"})
        reply = session.wait_for("node_config_status")
        assert (reply.state, reply.version, reply.error.aos_code) == ("installed", "2.0.0", 6)
        assert reply.error.message.startswith(expected)
    assert stored.read_bytes() == before
    session.send("get_node_config_status")
    assert session.wait_for("node_config_status").version == "1.0.0"
    assert len(contract_cm.sessions) == 1


def test_an_empty_node_group_codename_is_installed(
    contract_cm: ContractCM, start_agent: Callable[..., Agent]
) -> None:
    start_agent(contract_cm.address)
    session = registered(contract_cm)
    session.send("set_node_config", {"nodeConfig": json.dumps({"nodeGroupSubject": {"codename": ""}}),
                                     "version": "1.0.0"})
    reply = session.wait_for("node_config_status")
    assert (reply.error.aos_code, reply.version) == (0, "1.0.0")


def test_a_batch_of_only_refused_instances_still_ends_with_node_instances_status(
    contract_cm: ContractCM, start_agent: Callable[..., Agent]
) -> None:
    agent = start_agent(contract_cm.address)
    session = registered(contract_cm)
    start = [{"instance": {"itemId": "", "subjectId": "s", "instance": "0"}, "runtimeId": "rt"},
             {"instance": {"itemId": "a", "subjectId": "s", "instance": str(2**64 - 1)}, "runtimeId": "rt"},
             {"instance": {"itemId": "b", "subjectId": "s", "instance": "1"}, "uid": 4294967295}]
    session.send("update_instances", {"startInstances": start})
    nodes = session.wait_for("node_instances_status", 10)
    statuses = [s for u in session.messages("update_instances_status") for s in u.instances]
    assert [(s.instance.item_id, s.state, s.error.aos_code, s.error.message.split(":")[0]) for s in statuses] == [
        ("", "failed", 6, "instance.item_id"), ("a", "failed", 6, "instance.instance"), ("b", "failed", 6, "uid")]
    assert list(nodes.instances) == []
    assert list(agent.launcher.node_instances_status().instances) == []


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def test_a_uid_wider_than_uint32_is_refused_not_truncated_to_root(
    contract_cm: ContractCM, start_agent: Callable[..., Agent]
) -> None:
    """protobuf decodes a uint32 varint of 2**32 as 0 without a word; run as uid 0 it would be
    root. The frame decodes, so only the check of its raw bytes can see it."""
    from contract import length_delimited_field

    start_agent(contract_cm.address)
    session = registered(contract_cm)
    info_class = contract_cm.contract.message_class("servicemanager.v5.InstanceInfo")
    info = info_class()
    info.instance.item_id, info.instance.subject_id, info.runtime_id = "wide", "s", "rt"
    uid_number = info_class.DESCRIPTOR.fields_by_name["uid"].number
    raw_info = bytes(info.SerializeToString()) + _varint(uid_number << 3) + _varint(2**32)
    assert info_class.FromString(raw_info).uid == 0  # what protobuf alone would have started
    session.send_raw(length_delimited_field(4, length_delimited_field(1, raw_info)))
    refused = session.wait_for("update_instances_status")
    assert [(s.instance.item_id, s.state, s.error.aos_code) for s in refused.instances] == [("wide", "failed", 6)]
    assert refused.instances[0].error.message.startswith("uid")
    session.wait_for("node_instances_status", predicate=lambda m: not m.instances)
    assert not session.closed.is_set() and len(contract_cm.sessions) == 1

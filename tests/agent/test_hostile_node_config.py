"""Hostile node configs against the contract CM: each gets a NodeConfigStatus with
invalidArgument naming the key, the stored file stays as it was, and the session goes on."""

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

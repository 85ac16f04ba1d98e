"""Hostile node configs: each value beyond what the wire or the monitor can carry is refused with
invalidArgument naming the key first, CM gets a reply, and the stored file stays as it was."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

import pytest

from aos_sm.agent.errors import AosCode, InvalidArgument
from aos_sm.agent.nodeconfig import parse_node_config
from aos_sm.agent.nodeconfig_store import NodeConfigService


def document(**overrides: Any) -> Dict[str, Any]:
    config: Dict[str, Any] = {"version": "1.0.0", "nodeGroupSubject": {"codename": "main"}}
    config.update(overrides)
    return config


def rule(**values: Any) -> Dict[str, Any]:
    return {"minTimeout": "PT1S", "minThreshold": 1, "maxThreshold": 2, **values}


HOSTILE = [
    (document(priority=1e30), "priority: out of range, got 1e+30"),
    (document(priority=2**64), "priority: out of range, got 18446744073709551616"),
    (document(priority=-1), "priority: must not be negative, got -1"),
    (document(alertRules={"download": rule(maxThreshold=1e30)}),
     "alertRules.download.maxThreshold: out of range, got 1e+30"),
    (document(alertRules={"upload": rule(minThreshold=2**64, maxThreshold=2**64)}),
     "alertRules.upload.minThreshold: out of range, got 18446744073709551616"),
    (document(alertRules={"cpu": rule(maxThreshold=101)}),
     "alertRules.cpu.maxThreshold: a percent is at most 100, got 101"),
    (document(alertRules={"ram": rule(maxThreshold=1e300)}),
     "alertRules.ram.maxThreshold: a percent is at most 100, got 1e+300"),
    (document(alertRules={"partitions": [dict(rule(maxThreshold=400), name="p")]}),
     "alertRules.partitions[0].maxThreshold: a percent is at most 100, got 400"),
    (document(alertRules={"cpu": rule(minTimeout=1e12)}), "alertRules.cpu.minTimeout: out of range"),
    (document(alertRules={"cpu": rule(minTimeout="-PT1S")}), "alertRules.cpu.minTimeout: invalid duration"),
    (document(labels=["\ud800"]), "labels[0]: not valid Unicode"),
    (document(nodeGroupSubject={"codename": "\udfff"}), "nodeGroupSubject.codename: not valid Unicode"),
]


@pytest.mark.parametrize(("config", "expected"), HOSTILE)
def test_hostile_values_are_refused_naming_the_key_first(config: Dict[str, Any], expected: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_node_config(json.dumps(config))
    assert str(caught.value).startswith(expected)
    # CM keeps 64 characters of ErrorInfo.message: the key and the cause fit in them.
    assert len(expected.split(", got")[0]) <= 64


def test_the_largest_uint64_values_still_pass() -> None:
    config = parse_node_config(json.dumps(document(
        priority=2**64 - 1, alertRules={"download": rule(minThreshold=0, maxThreshold=2**64 - 1),
                                        "cpu": rule(minThreshold=0, maxThreshold=100)})))
    assert config.config.priority == 2**64 - 1
    assert config.config.alert_rules is not None and config.config.alert_rules.download is not None
    assert config.config.alert_rules.download.max_threshold == 2**64 - 1


def test_empty_node_group_codename_is_accepted_as_the_reference_does() -> None:
    parsed = parse_node_config(json.dumps(document(nodeGroupSubject={"codename": ""})))
    assert parsed.config.node_group_codename == ""


def test_non_utf8_bytes_name_the_first_bad_byte() -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_node_config(b'{"version": "1.0.0", "labels": ["\xff"]}')
    assert str(caught.value) == "node_config: not UTF-8 at byte 33 (b'\\xff')"


def test_utf8_bytes_parse_like_text() -> None:
    parsed = parse_node_config(json.dumps(document(labels=["ü"])).encode("utf-8"))
    assert parsed.config.labels == ("ü",)


@pytest.mark.parametrize("hostile", [
    json.dumps(document(version="2.0.0", priority=1e30)).encode(),
    json.dumps(document(version="2.0.0", alertRules={"download": rule(maxThreshold=1e30)})).encode(),
    b'{"version": "2.0.0", "nodeGroupSubject": {"codename": "\xc3\x28"}}',
])
@pytest.mark.parametrize("operation", ["check", "set"])
def test_service_replies_invalid_argument_and_keeps_the_stored_file(
        tmp_path: Path, hostile: bytes, operation: str) -> None:
    path = tmp_path / "aos_node.cfg"
    service = NodeConfigService(path)
    assert service.set(json.dumps(document()), "").error.aos_code == AosCode.NONE
    before = path.read_bytes()
    reply = getattr(service, operation)(hostile, "")
    assert reply.error.aos_code == AosCode.INVALID_ARGUMENT
    assert reply.state == "installed"
    assert path.read_bytes() == before
    assert NodeConfigService(path).current() == service.current()
    assert service.current() is not None and service.current().version == "1.0.0"  # type: ignore[union-attr]

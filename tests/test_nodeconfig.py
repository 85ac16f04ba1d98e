"""Node config: parsing rules, the version rule, errors, and the service over a real stored file."""

from __future__ import annotations

import datetime
import errno
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from aos_sm.agent import errors
from aos_sm.agent.errors import AosCode, InvalidArgument
from aos_sm.agent.nodeconfig import (
    MAX_NODE_CONFIG_BYTES,
    AlertRules,
    NodeConfig,
    NodeConfigState,
    PartitionRule,
    PercentRule,
    PointsRule,
    ResourceRatios,
    check_version_rule,
    parse_node_config,
    plan_node_config,
)
from aos_sm.agent.nodeconfig_store import NodeConfigService
from aos_sm.agent.semver import compare_semver, parse_semver

td = datetime.timedelta

FULL_CONFIG = {
    "version": "1.0.0",
    "node": {"codename": "node-1"},
    "nodeGroupSubject": {"codename": "mainType"},
    "alertRules": {
        "ram": {"minTimeout": "PT1S", "minThreshold": 0.1, "maxThreshold": 0.2},
        "cpu": {"minTimeout": "1m30s", "minThreshold": 30, "maxThreshold": 40},
        "partitions": [
            {"name": "partition1", "minTimeout": 3, "minThreshold": 50, "maxThreshold": 60}
        ],
        "download": {"minTimeout": "PT5S", "minThreshold": 100, "maxThreshold": 200},
        "upload": {"minTimeout": "500ms", "minThreshold": 300, "maxThreshold": 400},
    },
    "resourceRatios": {"cpu": 50, "ram": 51, "storage": 52, "state": 53},
    "labels": ["mainNode"],
    "priority": 1,
}


def config_text(version: str | None = "1.0.0", **overrides: Any) -> str:
    document: dict[str, Any] = {"nodeGroupSubject": {"codename": "mainType"}}
    if version is not None:
        document["version"] = version
    document.update(overrides)
    return json.dumps(document)


def invalid(text: str, version: str = "") -> str:
    """The InvalidArgument message parse_node_config raises for ``text``."""
    with pytest.raises(InvalidArgument) as caught:
        parse_node_config(text, version)
    assert caught.value.aos_code == AosCode.INVALID_ARGUMENT
    return str(caught.value)


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------


def test_full_config_parses_into_typed_records() -> None:
    parsed = parse_node_config(json.dumps(FULL_CONFIG))
    assert parsed.unknown_keys == ()
    assert parsed.config == NodeConfig(
        version="1.0.0",
        node_group_codename="mainType",
        node_codename="node-1",
        alert_rules=AlertRules(
            ram=PercentRule(td(seconds=1), 0.1, 0.2),
            cpu=PercentRule(td(seconds=90), 30.0, 40.0),
            partitions=(PartitionRule("partition1", td(seconds=3), 50.0, 60.0),),
            download=PointsRule(td(seconds=5), 100, 200),
            upload=PointsRule(td(milliseconds=500), 300, 400),
        ),
        resource_ratios=ResourceRatios(cpu=50.0, ram=51.0, storage=52.0, state=53.0),
        labels=("mainNode",),
        priority=1,
    )


def test_keys_are_case_insensitive_at_every_level() -> None:
    text = json.dumps(
        {
            "VERSION": "2.0.0",
            "NODEGROUPSUBJECT": {"CODENAME": "mainType"},
            "Node": {"codeName": "n1"},
            "AlertRules": {
                "CPU": {"MINTIMEOUT": "PT2S", "minthreshold": 1, "MaxThreshold": 2},
                "Partitions": [{"NAME": "p", "MinThreshold": 1, "MAXTHRESHOLD": 2}],
            },
            "ResourceRatios": {"CPU": 5},
            "LABELS": ["x"],
            "Priority": 3,
        }
    )
    config = parse_node_config(text).config
    assert config.version == "2.0.0"
    assert config.node_group_codename == "mainType"
    assert config.node_codename == "n1"
    assert config.alert_rules is not None
    assert config.alert_rules.cpu == PercentRule(td(seconds=2), 1.0, 2.0)
    assert config.alert_rules.partitions[0].name == "p"
    assert config.resource_ratios == ResourceRatios(cpu=5.0)
    assert config.labels == ("x",)
    assert config.priority == 3


def test_null_counts_as_absent() -> None:
    text = config_text(
        node=None,
        alertRules={"cpu": None, "ram": {"minTimeout": None, "minThreshold": 1, "maxThreshold": 2}},
        resourceRatios=None,
        labels=None,
        priority=None,
    )
    config = parse_node_config(text).config
    assert config.node_codename is None
    assert config.alert_rules == AlertRules(ram=PercentRule(td(0), 1.0, 2.0))
    assert config.resource_ratios is None
    assert config.labels == ()
    assert config.priority == 0


def test_null_codename_is_missing() -> None:
    message = invalid(json.dumps({"version": "1.0.0", "nodeGroupSubject": {"codename": None}}))
    assert message == "nodeGroupSubject.codename: missing"


@pytest.mark.parametrize(
    "document",
    [
        {"version": "1.0.0"},
        {"version": "1.0.0", "nodeGroupSubject": {}},
        {"version": "1.0.0", "nodeGroupSubject": None},
    ],
)
def test_missing_node_group_codename(document: dict[str, Any]) -> None:
    assert invalid(json.dumps(document)) == "nodeGroupSubject.codename: missing"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"version": "1.0.0",', "malformed node config JSON: Expecting property name"),
        ("", "malformed node config JSON: Expecting value at line 1 column 1"),
        ('{"a": NaN}', "NaN is not a JSON value"),
        ("[1, 2]", "node config: expected an object, got an array"),
        ('"text"', 'node config: expected an object, got "text"'),
        ("[" * 100_000, "malformed node config JSON"),
    ],
)
def test_malformed_json_names_what_is_wrong(text: str, expected: str) -> None:
    assert expected in invalid(text)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"alertRules": {"cpu": {"minThreshold": 1, "maxThreshold": "high"}}},
            'alertRules.cpu.maxThreshold: expected a number, got "high"',
        ),
        (
            {"alertRules": {"ram": {"minThreshold": True, "maxThreshold": 2}}},
            "alertRules.ram.minThreshold: expected a number, got true",
        ),
        (
            {"alertRules": {"download": {"minThreshold": 1.5, "maxThreshold": 2}}},
            "alertRules.download.minThreshold: expected an integer, got 1.5",
        ),
        (
            {"alertRules": {"upload": {"minThreshold": 1}}},
            "alertRules.upload.maxThreshold: missing",
        ),
        (
            {"alertRules": {"cpu": {"minTimeout": "soon", "minThreshold": 1, "maxThreshold": 2}}},
            "alertRules.cpu.minTimeout: invalid duration 'soon'",
        ),
        (
            {"alertRules": {"cpu": {"minTimeout": [1], "minThreshold": 1, "maxThreshold": 2}}},
            "alertRules.cpu.minTimeout: expected a duration",
        ),
        (
            {"alertRules": {"cpu": {"minThreshold": 5, "maxThreshold": 2}}},
            "alertRules.cpu.minThreshold: 5.0 is greater than maxThreshold 2.0",
        ),
        (
            {"alertRules": {"cpu": {"minThreshold": -1, "maxThreshold": 2}}},
            "alertRules.cpu.minThreshold: must not be negative",
        ),
        ({"alertRules": {"cpu": 5}}, "alertRules.cpu: expected an object, got 5"),
        ({"alertRules": []}, "alertRules: expected an object, got an array"),
        (
            {"alertRules": {"partitions": {}}},
            "alertRules.partitions: expected an array, got an object",
        ),
        (
            {"alertRules": {"partitions": [{"minThreshold": 1, "maxThreshold": 2}]}},
            "alertRules.partitions[0].name: missing",
        ),
        (
            {"alertRules": {"partitions": [7]}},
            "alertRules.partitions[0]: expected an object, got 7",
        ),
        (
            {
                "alertRules": {
                    "partitions": [
                        {"name": "p", "minThreshold": 1, "maxThreshold": 2},
                        {"name": "p", "minThreshold": 1, "maxThreshold": 2},
                    ]
                }
            },
            "alertRules.partitions[1].name: duplicate partition 'p'",
        ),
        ({"resourceRatios": {"ram": "half"}}, 'resourceRatios.ram: expected a number, got "half"'),
        ({"resourceRatios": {"ram": -1}}, "resourceRatios.ram: must not be negative"),
        ({"labels": "main"}, 'labels: expected an array, got "main"'),
        ({"labels": ["ok", 3]}, "labels[1]: expected a string, got 3"),
        ({"priority": "high"}, 'priority: expected an integer, got "high"'),
        ({"priority": -1}, "priority: must not be negative"),
        ({"node": {"codename": 5}}, "node.codename: expected a string, got 5"),
        ({"nodeGroupSubject": "main"}, 'nodeGroupSubject: expected an object, got "main"'),
        ({"nodeGroupSubject": {"codename": "a", "CodeName": "b"}}, "duplicate key"),
    ],
)
def test_wrong_types_name_the_key_path(overrides: dict[str, Any], expected: str) -> None:
    document: dict[str, Any] = {"version": "1.0.0", "nodeGroupSubject": {"codename": "m"}}
    document.update(overrides)
    assert expected in invalid(json.dumps(document))


def test_each_min_timeout_form() -> None:
    forms: dict[str | int | float, datetime.timedelta] = {
        "PT1M30S": td(seconds=90),
        "1m30s": td(seconds=90),
        90: td(seconds=90),
        0.5: td(milliseconds=500),
    }
    for form, expected in forms.items():
        rule = {"minTimeout": form, "minThreshold": 1, "maxThreshold": 2}
        text = config_text(alertRules={"cpu": rule})
        rules = parse_node_config(text).config.alert_rules
        assert rules is not None and rules.cpu is not None
        assert rules.cpu.min_timeout == expected, form


def test_unknown_keys_are_ignored_but_reported() -> None:
    text = json.dumps(
        {
            "version": "1.0.0",
            "nodeGroupSubject": {"codename": "m", "extra": 1},
            "futureField": {"x": 1},
            "alertRules": {
                "partitions": [{"name": "p", "minThreshold": 1, "maxThreshold": 2, "Z": 0}]
            },
        }
    )
    parsed = parse_node_config(text)
    assert parsed.config.node_group_codename == "m"
    assert set(parsed.unknown_keys) == {
        "nodeGroupSubject.extra",
        "futureField",
        "alertRules.partitions[0].Z",
    }


def test_message_version_overrides_json_version() -> None:
    assert parse_node_config(config_text("1.0.0"), "2.0.0").config.version == "2.0.0"
    assert parse_node_config(config_text("1.0.0"), "").config.version == "1.0.0"


def test_missing_version_everywhere_is_invalid() -> None:
    assert "version: missing" in invalid(config_text(None))


def test_invalid_json_version() -> None:
    assert "version: invalid semver 'one'" in invalid(config_text("one"))
    # A JSON version of the wrong type is an error even when the message's version overrides it.
    numeric = json.dumps({"version": 1, "nodeGroupSubject": {"codename": "m"}})
    assert "version: expected a string, got 1" in invalid(numeric, "1.0.0")


def test_oversized_text_is_rejected_before_parsing() -> None:
    # Not even JSON: proves the size check comes first.
    message = invalid("x" * (MAX_NODE_CONFIG_BYTES + 1))
    assert "larger than" in message
    # Under the limit in characters, over it in UTF-8 bytes.
    message = invalid("\u00e9" * (MAX_NODE_CONFIG_BYTES // 2 + 1))
    assert "larger than" in message


# --------------------------------------------------------------------------------------------
# Semver and the version rule
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("left", "right", "order"),
    [
        ("1.0.0", "1.0.0", 0),
        ("1.0.0", "2.0.0", -1),
        ("2.0.0", "1.10.0", 1),
        ("1.2.10", "1.2.9", 1),
        ("1.0.0-alpha", "1.0.0", -1),
        ("1.0.0-alpha", "1.0.0-alpha.1", -1),
        ("1.0.0-alpha.1", "1.0.0-alpha.beta", -1),
        ("1.0.0-alpha.beta", "1.0.0-beta", -1),
        ("1.0.0-beta.2", "1.0.0-beta.11", -1),
        ("1.0.0-beta.11", "1.0.0-rc.1", -1),
        ("1.0.0-rc.1", "1.0.0", -1),
        ("1.0.0+build.1", "1.0.0+build.2", 0),
        ("v1.2.3", "1.2.3", 0),
    ],
)
def test_semver_precedence(left: str, right: str, order: int) -> None:
    assert compare_semver(left, right) == order
    assert compare_semver(right, left) == -order


@pytest.mark.parametrize(
    "text",
    ["", "1", "1.0", "01.0.0", "1.0.0-", "1.0.0-01", "1.0.0+", " 1.0.0", "1.0.0.0", "vv1.0.0",
     "1.\u0661.0", "x" * 300],
)
def test_invalid_semver(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_semver(text)


def test_version_rule() -> None:
    check_version_rule(None, "0.0.1")
    check_version_rule("1.0.0", "1.0.1")
    check_version_rule("1.0.0-rc.1", "1.0.0")
    with pytest.raises(errors.AlreadyExist) as same:
        check_version_rule("1.0.0", "1.0.0+other")
    assert same.value.aos_code == 8
    with pytest.raises(errors.WrongState) as lower:
        check_version_rule("1.0.0", "1.0.0-rc.1")
    assert lower.value.aos_code == 9
    with pytest.raises(InvalidArgument) as bad:
        check_version_rule("1.0.0", "latest")
    assert bad.value.aos_code == 6
    with pytest.raises(InvalidArgument):
        check_version_rule(None, "latest")


def test_plan_applies_parse_then_version_rule() -> None:
    assert plan_node_config(None, config_text("1.0.0"), "").config.version == "1.0.0"
    with pytest.raises(errors.AlreadyExist):
        plan_node_config("1.0.0", config_text("2.0.0"), "1.0.0")


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def test_error_codes_and_translation() -> None:
    assert [code.value for code in AosCode] == list(range(15))
    assert errors.error_info_ok().aos_code == 0 and errors.error_info_ok().message == ""
    info = errors.error_info_from_exception(errors.NotSupported("no launcher"))
    assert (info.aos_code, info.message) == (12, "no launcher")
    info = errors.error_info_from_exception(FileNotFoundError(errno.ENOENT, "No such file", "/x"))
    assert (info.aos_code, info.exit_code) == (AosCode.RUNTIME, errno.ENOENT)
    assert "/x" in info.message
    info = errors.error_info_from_exception(KeyError("boom"))
    assert info.aos_code == AosCode.FAILED and "boom" in info.message
    config_error = errors.ConfigError("monitoring.pollPeriod", "invalid duration 'x'")
    assert config_error.key == "monitoring.pollPeriod"
    assert config_error.aos_code == AosCode.INVALID_ARGUMENT
    assert str(config_error).startswith("monitoring.pollPeriod: ")


# --------------------------------------------------------------------------------------------
# The service over a real stored file
# --------------------------------------------------------------------------------------------


def assert_ok(status: Any) -> None:
    assert status.HasField("error")
    assert status.error.aos_code == 0
    assert status.error.message == ""


def test_absent_status_has_error_filled(tmp_path: Path) -> None:
    service = NodeConfigService(tmp_path / "aos_node.cfg")
    status = service.status()
    assert (status.state, status.version) == (NodeConfigState.ABSENT, "")
    assert_ok(status)
    assert service.current() is None


def test_set_reply_carries_state_before_and_status_after(tmp_path: Path) -> None:
    service = NodeConfigService(tmp_path / "aos_node.cfg")
    reply = service.set(config_text("1.0.0"), "1.0.0")
    assert (reply.state, reply.version) == ("absent", "1.0.0")
    assert_ok(reply)
    status = service.status()
    assert (status.state, status.version) == ("installed", "1.0.0")
    assert_ok(status)
    reply = service.set(config_text("1.0.0"), "1.1.0")
    assert (reply.state, reply.version) == ("installed", "1.1.0")
    assert_ok(reply)
    current = service.current()
    assert current is not None and current.version == "1.1.0"


def test_set_version_rule_errors_keep_installed_config(tmp_path: Path) -> None:
    service = NodeConfigService(tmp_path / "aos_node.cfg")
    service.set(config_text(), "2.0.0")
    stored = (tmp_path / "aos_node.cfg").read_bytes()
    for version, code in (("2.0.0", 8), ("1.9.9", 9), ("two", 6)):
        reply = service.set(config_text(), version)
        assert (reply.state, reply.version, reply.error.aos_code) == ("installed", version, code)
        assert reply.error.message
    malformed = service.set('{"nodeGroupSubject": ', "3.0.0")
    assert malformed.error.aos_code == 6 and "malformed" in malformed.error.message
    assert service.status().version == "2.0.0"
    assert (tmp_path / "aos_node.cfg").read_bytes() == stored


def test_check_does_not_change_state(tmp_path: Path) -> None:
    path = tmp_path / "aos_node.cfg"
    service = NodeConfigService(path)
    reply = service.check(config_text(), "1.0.0")
    assert (reply.state, reply.version) == ("absent", "1.0.0")
    assert_ok(reply)
    assert service.status().state == "absent"
    assert not path.exists()
    service.set(config_text(), "1.0.0")
    reply = service.check(config_text(), "1.0.0")
    assert (reply.state, reply.version, reply.error.aos_code) == ("installed", "1.0.0", 8)
    reply = service.check(config_text(), "1.5.0")
    assert (reply.state, reply.version) == ("installed", "1.5.0")
    assert_ok(reply)
    assert service.status().version == "1.0.0"


def test_reply_version_falls_back_to_json_version(tmp_path: Path) -> None:
    service = NodeConfigService(tmp_path / "aos_node.cfg")
    assert service.check(config_text("1.2.3"), "").version == "1.2.3"
    assert service.set(config_text("1.2.3"), "").version == "1.2.3"
    assert service.set(config_text("1.2.3"), "").error.aos_code == 8


def test_status_after_restart(tmp_path: Path) -> None:
    path = tmp_path / "aos_node.cfg"
    text = json.dumps(FULL_CONFIG)
    NodeConfigService(path).set(text, "4.0.0")
    restarted = NodeConfigService(path)
    status = restarted.status()
    assert (status.state, status.version) == ("installed", "4.0.0")
    assert_ok(status)
    current = restarted.current()
    assert current is not None and current.node_codename == "node-1"
    stored = json.loads(path.read_text("utf-8"))
    assert stored == {"formatVersion": 1, "version": "4.0.0", "nodeConfig": text}
    # The version rule holds across the restart.
    assert restarted.set(text, "3.0.0").error.aos_code == 9


def test_reference_bare_stored_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "aos_node.cfg"
    path.write_text(config_text("1.4.0"), "utf-8")
    status = NodeConfigService(path).status()
    assert (status.state, status.version) == ("installed", "1.4.0")


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"\xff\xfe", b'{"formatVersion": 1, "version": "1.0.0", "nodeConfig": 5}',
     b'{"formatVersion": 1, "version": "1.0.0", "nodeConfig": "{}"}'],
)
def test_corrupt_stored_file_is_failed_and_kept_until_valid_set(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "aos_node.cfg"
    path.write_bytes(content)
    service = NodeConfigService(path)
    status = service.status()
    assert (status.state, status.version) == ("failed", "")
    assert status.error.aos_code == 6 and status.error.message
    assert service.current() is None
    # A failed set and a check leave the corrupt file alone.
    rejected = service.set('{"nodeGroupSubject": {}}', "1.0.0")
    assert (rejected.state, rejected.error.aos_code) == ("failed", 6)
    assert service.check(config_text(), "1.0.0").state == "failed"
    assert path.read_bytes() == content
    assert NodeConfigService(path).status().state == "failed"
    # A valid set replaces it: nothing is installed, so any valid version passes.
    reply = service.set(config_text(), "0.0.1")
    assert (reply.state, reply.version) == ("failed", "0.0.1")
    assert_ok(reply)
    assert service.status().state == "installed"
    assert NodeConfigService(path).status().version == "0.0.1"


def test_unreadable_stored_file_is_failed_with_errno(tmp_path: Path) -> None:
    path = tmp_path / "aos_node.cfg"
    path.mkdir()  # reading a directory fails with EISDIR, as root too
    status = NodeConfigService(path).status()
    assert status.state == "failed"
    assert (status.error.aos_code, status.error.exit_code) == (2, errno.EISDIR)


def test_store_failure_is_runtime_error_and_keeps_previous(tmp_path: Path) -> None:
    path = tmp_path / "aos_node.cfg"
    service = NodeConfigService(path)
    service.set(config_text(), "1.0.0")
    path.unlink()
    path.mkdir()  # rename over a directory fails: the write can't happen
    (path / "x").touch()
    reply = service.set(config_text(), "2.0.0")
    assert (reply.state, reply.error.aos_code) == ("installed", 2)
    assert reply.error.exit_code != 0
    assert service.status().version == "1.0.0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aos_node.cfg"]


def test_listeners_get_new_config_and_a_raising_one_does_not_break_set(tmp_path: Path) -> None:
    service = NodeConfigService(tmp_path / "aos_node.cfg")
    seen: list[NodeConfig] = []

    def broken(config: NodeConfig) -> None:
        raise RuntimeError("listener bug")

    service.add_listener(broken)
    service.add_listener(seen.append)
    service.add_listener(lambda config: seen.append(service.current()))  # type: ignore[arg-type]
    assert service.check(config_text(), "1.0.0").error.aos_code == 0
    assert seen == []  # check notifies nobody
    reply = service.set(config_text(), "1.0.0")
    assert_ok(reply)
    assert [config.version for config in seen] == ["1.0.0", "1.0.0"]
    assert service.set(config_text(), "1.0.0").error.aos_code == 8
    assert len(seen) == 2  # a rejected set notifies nobody


def test_oversized_request_gets_invalid_argument_reply(tmp_path: Path) -> None:
    service = NodeConfigService(tmp_path / "aos_node.cfg")
    reply = service.set(" " * (MAX_NODE_CONFIG_BYTES + 1), "1.0.0")
    assert (reply.state, reply.version, reply.error.aos_code) == ("absent", "1.0.0", 6)
    assert not (tmp_path / "aos_node.cfg").exists()


def test_concurrent_sets_install_each_version_once(tmp_path: Path) -> None:
    path = tmp_path / "aos_node.cfg"
    service = NodeConfigService(path)
    codes: list[int] = []
    lock = threading.Lock()

    def attempt(version: str) -> None:
        code = service.set(config_text(), version).error.aos_code
        with lock:
            codes.append(code)

    threads = [threading.Thread(target=attempt, args=("1.0.0",)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(codes) == [0] + [8] * 7
    assert NodeConfigService(path).status().version == "1.0.0"

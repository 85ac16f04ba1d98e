"""The SM's configuration file: reference key names, case-insensitive, bad values name the key."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from aos_sm.agent import config as config_module
from aos_sm.agent.config import (AgentConfig, ConfigFileError, JournalAlertsConfig, RuntimeSettings, load_config,
                                 parse_config)
from aos_sm.agent.errors import ConfigError


def parse(data: dict) -> AgentConfig:
    return parse_config(json.dumps(data))


def test_defaults_follow_the_reference() -> None:
    config = parse_config("{}")
    assert config.cm_reconnect_timeout == 10.0
    assert config.cm_reconnect_max_timeout is None
    assert config.reconnect_cap == 10.0  # CM wants the node back within ~10 s of its return
    assert config.reconnect_first_wait == 0.5
    assert config.tls_mode == "mtls"
    assert config.node_config_file == config.working_dir / "aos_node.cfg"
    assert config.resources_config_file == Path("/etc/aos/resources.cfg")
    assert (config.poll_period, config.average_window) == (35.0, 35.0)
    assert (config.max_part_size, config.max_part_count) == (262144, 80)


def test_keys_are_case_insensitive_and_durations_take_every_form() -> None:
    config = parse_config(json.dumps({
        "CMSERVERURL": "cm:8093", "tlsmode": "PLAINTEXT", "CmReconnectTimeout": "1.5s",
        "cmReconnectMaxTimeout": "PT2M", "Monitoring": {"POLLPERIOD": 5, "averageWindow": "1m30s"},
        "logging": {"maxpartsize": 4096}, "WorkingDir": "/tmp/sm",
    }))
    assert config.cm_server_url == "cm:8093"
    assert config.tls_mode == "plaintext"
    assert config.cm_reconnect_timeout == 1.5
    assert config.cm_reconnect_max_timeout == 120.0 == config.reconnect_cap
    assert any("cmReconnectMaxTimeout" in warning and "1 minute" in warning for warning in config.warnings)
    assert (config.poll_period, config.average_window) == (5.0, 90.0)
    assert config.max_part_size == 4096
    assert config.node_config_file == Path("/tmp/sm/aos_node.cfg")


def test_what_the_config_leaves_unset_stays_unset_for_discovery() -> None:
    """node id, runtimes and the system log come from the host, found by agent/registration.py."""
    config = parse_config("{}")
    assert (config.node_id, config.runtimes, config.system_log) == ("", (), None)
    assert (config.architecture, config.architecture_variant, config.os_version) == (None, None, None)
    assert parse_config('{"nodeId": "main"}').node_id == "main"


def test_a_lower_reconnect_cap_is_taken_and_the_first_wait_stays_under_it() -> None:
    config = parse({"cmReconnectTimeout": "1s", "cmReconnectMaxTimeout": "200ms"})
    assert (config.reconnect_cap, config.reconnect_first_wait) == (0.2, 0.05)
    assert config.warnings == ()
    assert parse({"cmReconnectTimeout": "1s"}).reconnect_cap == 1.0


def test_platform_overrides_use_the_iam_key_names_within_cm_limits() -> None:
    config = parse({"architecture": "arm", "ArchitectureVariant": "v7", "osVersion": "12"})
    assert (config.architecture, config.architecture_variant, config.os_version) == ("arm", "v7", "12")
    assert parse({"architectureVariant": ""}).architecture_variant == ""


def test_runtimes_carry_reserved_budgets_only_when_set() -> None:
    config = parse({"runtimes": [{"type": "runc", "allowedDMIPS": 5000, "AllowedRAM": 1 << 30}, {"type": "crun"}]})
    assert config.runtime_settings == (RuntimeSettings("runc", 5000, 1 << 30), RuntimeSettings("crun"))
    assert config.runtimes == ("runc", "crun")


def test_the_parser_never_looks_at_the_host() -> None:
    """Parsing is text in, config out (issue 11): no hw/ probes, no filesystem checks, no
    subprocess, no $PATH or hostname lookups in agent/config.py."""
    tree = ast.parse(Path(config_module.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(("." * node.level) + (node.module or ""))
    forbidden_modules = {"os", "os.path", "shutil", "socket", "subprocess", "glob", "platform"}
    assert not imported & forbidden_modules, imported & forbidden_modules
    assert not any("hw" in name.split(".") for name in imported), imported
    host_calls = {"exists", "is_file", "is_dir", "which", "gethostname", "glob", "iterdir", "access",
                  "uname", "run", "Popen", "check_output", "listdir", "scandir"}
    called = {node.func.attr for node in ast.walk(tree)
              if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)}
    assert not called & host_calls, called & host_calls
    # The only file access is load_config reading the file it is given.
    readers = [node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)
               and any(isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                       and call.func.attr in ("read_text", "stat", "open") for call in ast.walk(node))]
    assert readers == ["load_config"]


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"cmReconnectTimeout": "soon"}, "cmReconnectTimeout"),
        ({"cmReconnectTimeout": "0s"}, "cmReconnectTimeout"),
        ({"cmReconnectMaxTimeout": "0s"}, "cmReconnectMaxTimeout"),
        ({"nodeId": "n" * 65}, "nodeId"),
        ({"osVersion": "6.1.0-13-arm64-with-a-very-long-suffix"}, "osVersion"),
        ({"architecture": "aarch64-with-a-long-name"}, "architecture"),
        ({"architectureVariant": 8}, "architectureVariant"),
        ({"runtimes": [{"type": "runc", "allowedDMIPS": -1}]}, "runtimes[0].allowedDMIPS"),
        ({"runtimes": [{"type": "runc", "allowedRAM": "1G"}]}, "runtimes[0].allowedRAM"),
        ({"runtimes": [{"type": "runc"}, {"type": "runc"}]}, "runtimes[1].type"),
        ({"tlsMode": "maybe"}, "tlsMode"),
        ({"cmServerURL": 8093}, "cmServerURL"),
        ({"cmServerURL": "cm:8093"}, "caCert"),
        ({"cmServerURL": "cm:8093", "caCert": "/ca", "certFile": "/c"}, "keyFile"),
        ({"monitoring": {"pollPeriod": [1]}}, "monitoring.pollPeriod"),
        ({"logging": {"maxPartCount": 0}}, "logging.maxPartCount"),
        ({"logging": {"maxPartSize": "big"}}, "logging.maxPartSize"),
        ({"maxDMIPS": -5}, "maxDMIPS"),
        ({"maxDMIPS": True}, "maxDMIPS"),
        ({"systemReserve": {"ramPercent": 150}}, "systemReserve.ramPercent"),
        ({"runtimes": "runc"}, "runtimes"),
        ({"runtimes": [{"type": ""}]}, "runtimes[0].type"),
        ({"logging": {"systemLog": "messages"}}, "logging.systemLog"),
        ({"logging": {"systemLog": 3}}, "logging.systemLog"),
        ({"journalAlerts": []}, "journalAlerts"),
        ({"journalAlerts": {"filter": "x"}}, "journalAlerts.filter"),
        ({"journalAlerts": {"filter": ["ok", "(unclosed"]}}, "journalAlerts.filter[1]"),
        ({"journalAlerts": {"systemAlertPriority": 8}}, "journalAlerts.systemAlertPriority"),
        ({"journalAlerts": {"serviceAlertPriority": "4"}}, "journalAlerts.serviceAlertPriority"),
        ({"monitoring": {"partitions": "/var"}}, "monitoring.partitions"),
        ({"monitoring": {"partitions": [{"name": "a"}]}}, "monitoring.partitions[0]"),
        ({"monitoring": {"partitions": [{"name": "a", "path": "/"}, {"name": "a", "path": "/x"}]}},
         "monitoring.partitions[1].name"),
        ({"monitoring": {"uplinkInterfaces": "eth0"}}, "monitoring.uplinkInterfaces"),
    ],
)
def test_a_bad_value_names_its_key(data: dict, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(data)
    assert caught.value.key == key
    assert str(caught.value).startswith(key)


def test_unknown_keys_are_warnings_not_errors() -> None:
    config = parse_config(json.dumps({"colour": "blue", "monitoring": {"pollPeriod": "1s", "x": 1}}))
    assert config.warnings == ("unknown configuration key 'colour' ignored",
                               "unknown configuration key 'monitoring.x' ignored")


def test_an_unknown_key_is_named_as_written_with_the_key_it_resembles() -> None:
    config = parse_config(json.dumps({"PollPeriod": "1s", "CMServerUrl": "cm:1", "tlsMode": "plaintext",
                                      "Monitoring": {"AverageWindow": "1s", "PolPeriod": "2s"}, "cgroupsParent": "x",
                                      "Logging": {"Colour": 1}}))
    assert config.warnings == (
        "unknown configuration key 'PollPeriod' ignored (did you mean 'monitoring.pollPeriod'?)",
        "unknown configuration key 'monitoring.PolPeriod' ignored (did you mean 'monitoring.pollPeriod'?)",
        "unknown configuration key 'cgroupsParent' ignored (did you mean 'cgroupParent'?)",
        "unknown configuration key 'logging.Colour' ignored",
    )
    assert (config.cm_server_url, config.average_window) == ("cm:1", 1.0)  # known keys in any case


def test_unknown_keys_in_list_entries_are_warned_with_their_index() -> None:
    config = parse_config(json.dumps({"runtimes": [{"type": "runc"}, {"Type": "crun", "allowedDIMPS": 5}],
                                      "monitoring": {"partitions": [{"name": "a", "path": "/", "size": 1}]}}))
    assert config.warnings == (
        "unknown configuration key 'runtimes[1].allowedDIMPS' ignored (did you mean 'runtimes[1].allowedDMIPS'?)",
        "unknown configuration key 'monitoring.partitions[0].size' ignored",
    )


def test_a_key_given_twice_in_different_cases_is_a_warning() -> None:
    config = parse_config('{"tlsMode": "plaintext", "cgroupParent": "a", "CgroupParent": "b"}')
    assert config.cgroup_parent == "b"
    assert config.warnings == ("configuration key 'CgroupParent' repeats 'cgroupParent' (keys are case-insensitive): "
                               "the last one is used",)


def test_the_system_log_is_the_configured_one() -> None:
    assert parse({"logging": {"systemLog": "JournalD"}}).system_log == "journald"
    assert parse({"logging": {"systemLog": "/var/log/syslog"}}).system_log == "/var/log/syslog"


def test_journal_alerts_follow_the_reference_defaults_and_keys() -> None:
    assert parse({}).journal_alerts == JournalAlertsConfig((), 3, 4)
    config = parse({"JournalAlerts": {"Filter": ["^audit", "ignored"], "systemAlertPriority": 2,
                                      "serviceAlertPriority": 5}})
    assert config.journal_alerts == JournalAlertsConfig(("^audit", "ignored"), 2, 5)
    assert config.warnings == ()


def test_runtimes_come_from_the_config() -> None:
    assert parse({"runtimes": [{"type": "runc"}, {"TYPE": "crun"}]}).runtimes == ("runc", "crun")


def test_image_ttl_is_a_duration() -> None:
    assert parse({}).image_ttl == 30 * 24 * 3600.0  # updateItemTTL's reference default
    assert parse({"imageTTL": "1h30m"}).image_ttl == 5400.0  # the older name still works
    assert parse({"updateItemTTL": "1h", "imageTTL": "2h"}).image_ttl == 3600.0  # the reference name wins
    assert parse({"imagesPartLimit": 80}).images_part_limit == 80.0
    with pytest.raises(ConfigError, match="imagesPartLimit"):
        parse({"imagesPartLimit": 120})
    assert parse({"imageTTL": 0}).image_ttl == 0.0
    with pytest.raises(ConfigError) as caught:
        parse({"imageTTL": "soon"})
    assert caught.value.key == "imageTTL"


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", ""])
def test_malformed_files_are_config_errors_naming_the_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "sm.cfg"
    path.write_text(text)
    with pytest.raises(ConfigFileError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: ") and "(file)" not in str(caught.value)
    assert caught.value.path == path


def test_a_bad_value_in_a_file_names_the_file_and_the_key(tmp_path: Path) -> None:
    path = tmp_path / "sm.cfg"
    path.write_text(json.dumps({"monitoring": {"pollPeriod": "often"}}))
    with pytest.raises(ConfigFileError) as caught:
        load_config(path)
    assert caught.value.key == "monitoring.pollPeriod"
    assert str(caught.value).startswith(f"{path}: monitoring.pollPeriod: ")


def test_iam_needs_ca_cert_unless_plaintext() -> None:
    with pytest.raises(ConfigError) as caught:
        parse({"iamPublicServerURL": "iam:8090", "tlsMode": "tls"})
    assert caught.value.key == "caCert"
    assert parse({"iamPublicServerURL": "iam:8090", "tlsMode": "plaintext"}).ca_cert is None


def test_missing_and_oversized_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.cfg")
    big = tmp_path / "big.cfg"
    big.write_bytes(b" " * (1024 * 1024 + 1))
    with pytest.raises(ConfigError, match="at most"):
        load_config(big)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aos_sm.agent.cli", *args],
                          capture_output=True, text=True, timeout=60)


def test_the_cli_exits_2_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "sm.cfg"
    path.write_text(json.dumps({"monitoring": {"pollPeriod": "often"}}))
    result = run_cli("run", "--config", str(path))
    assert result.returncode == 2
    assert "monitoring.pollPeriod" in result.stderr
    assert "Traceback" not in result.stderr


def test_monitoring_partitions_and_uplinks() -> None:
    defaults = parse({"workingDir": "/srv/sm"})
    assert defaults.monitoring_partitions == (("workingDir", Path("/srv/sm")),)
    assert defaults.uplink_interfaces is None  # those with a default route, found at each poll
    config = parse({"monitoring": {"Partitions": [{"Name": "state", "PATH": "/var/aos/state"}],
                                   "uplinkInterfaces": ["eth0", "wwan0"]}})
    assert config.monitoring_partitions == (("state", Path("/var/aos/state")),)
    assert config.uplink_interfaces == ("eth0", "wwan0")
    assert parse({"monitoring": {"uplinkInterfaces": []}}).uplink_interfaces == ()


def test_storage_state_and_host_dirs_follow_the_working_dir_unless_set() -> None:
    config = parse_config('{"workingDir": "/data/sm"}')
    assert (config.storage_dir, config.state_dir) == (Path("/data/sm/storages"), Path("/data/sm/states"))
    assert config.rootfs_host_dirs == ("bin", "sbin", "lib", "lib64", "usr")
    config = parse_config('{"storageDir": "/s", "stateDir": "/t", "RootfsHostDirs": ["usr", "lib", "usr"]}')
    assert (config.storage_dir, config.state_dir, config.rootfs_host_dirs) == (Path("/s"), Path("/t"), ("usr", "lib"))
    for bad in ('["usr/lib"]', '[".."]', '"usr"', '[""]'):
        with pytest.raises(ConfigError, match="rootfsHostDirs"):
            parse_config(f'{{"rootfsHostDirs": {bad}}}')

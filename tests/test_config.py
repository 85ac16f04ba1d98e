"""The SM's configuration file: reference key names, case-insensitive, bad values name the key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from aos_sm.agent.config import JournalAlertsConfig, detect_runtimes, detect_system_log, load_config, parse_config
from aos_sm.agent.errors import ConfigError


def parse(data: dict, root: Path = Path("/")) -> object:
    return parse_config(json.dumps(data), root=root)


def test_defaults_follow_the_reference() -> None:
    config = parse_config("{}")
    assert config.cm_reconnect_timeout == 10.0
    assert config.cm_reconnect_max_timeout == 60.0
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
    assert config.cm_reconnect_max_timeout == 120.0
    assert (config.poll_period, config.average_window) == (5.0, 90.0)
    assert config.max_part_size == 4096
    assert config.node_config_file == Path("/tmp/sm/aos_node.cfg")


def test_node_id_defaults_to_machine_id_then_hostname(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    assert parse_config("{}", root=tmp_path).node_id  # hostname
    (tmp_path / "etc/machine-id").write_text("0123456789abcdef\n")
    assert parse_config("{}", root=tmp_path).node_id == "0123456789abcdef"
    assert parse_config('{"nodeId": "main"}', root=tmp_path).node_id == "main"


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"cmReconnectTimeout": "soon"}, "cmReconnectTimeout"),
        ({"cmReconnectTimeout": "0s"}, "cmReconnectTimeout"),
        ({"cmReconnectTimeout": "10s", "cmReconnectMaxTimeout": "5s"}, "cmReconnectMaxTimeout"),
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


def test_the_system_log_is_the_configured_one_else_what_the_node_has(tmp_path: Path) -> None:
    assert parse({"logging": {"systemLog": "JournalD"}}).system_log == "journald"
    assert parse({"logging": {"systemLog": "/var/log/syslog"}}).system_log == "/var/log/syslog"
    journalctl = lambda name: "/usr/bin/journalctl"  # noqa: E731
    assert detect_system_log(tmp_path, journalctl) == "/var/log/messages"
    (tmp_path / "run/systemd/journal").mkdir(parents=True)
    (tmp_path / "run/systemd/journal/socket").touch()
    assert detect_system_log(tmp_path, journalctl) == "journald"
    assert detect_system_log(tmp_path, lambda name: None) == "/var/log/messages"
    assert parse({}, root=tmp_path).system_log in ("journald", "/var/log/messages")


def test_journal_alerts_follow_the_reference_defaults_and_keys() -> None:
    assert parse({}).journal_alerts == JournalAlertsConfig((), 3, 4)
    config = parse({"JournalAlerts": {"Filter": ["^audit", "ignored"], "systemAlertPriority": 2,
                                      "serviceAlertPriority": 5}})
    assert config.journal_alerts == JournalAlertsConfig(("^audit", "ignored"), 2, 5)
    assert config.warnings == ()


def test_runtimes_come_from_the_config_or_from_what_is_installed() -> None:
    assert parse({"runtimes": [{"type": "runc"}, {"TYPE": "crun"}]}).runtimes == ("runc", "crun")
    assert detect_runtimes(lambda name: "/usr/bin/runc" if name == "runc" else None, "v2") == ("runc",)
    # Nothing installed: no runtime is offered, rather than a "container" runtime that cannot run.
    assert detect_runtimes(lambda name: None, "v2") == ()
    # crun 1.8 refuses hybrid cgroups: it is offered on v1/v2 nodes only; runc runs on all three.
    everything = lambda name: f"/usr/bin/{name}"  # noqa: E731
    assert detect_runtimes(everything, "v2") == ("crun", "runc")
    assert detect_runtimes(everything, "hybrid") == ("runc",)


def test_image_ttl_is_a_duration() -> None:
    assert parse({}).image_ttl == 24 * 3600.0
    assert parse({"imageTTL": "1h30m"}).image_ttl == 5400.0
    assert parse({"imageTTL": 0}).image_ttl == 0.0
    with pytest.raises(ConfigError) as caught:
        parse({"imageTTL": "soon"})
    assert caught.value.key == "imageTTL"


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", ""])
def test_malformed_files_are_config_errors(tmp_path: Path, text: str) -> None:
    path = tmp_path / "sm.cfg"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_config(path)


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

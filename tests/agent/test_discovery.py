"""Host discovery for registration (agent/registration.py): once, under the probe root."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from aos_sm.agent.config import parse_config
from aos_sm.agent.errors import ConfigError
from aos_sm.agent.registration import (default_node_id, detect_runtimes, detect_system_log, discover,
                                       which_under)

BOARDS = Path(__file__).resolve().parent.parent / "data" / "boards"


def test_node_id_is_machine_id_then_hostname_then_the_tree_name(tmp_path: Path) -> None:
    root = tmp_path / "board-a"
    (root / "etc").mkdir(parents=True)
    assert default_node_id(root) == "board-a"  # an image tree with neither file
    (root / "etc/hostname").write_text("gateway-7\n")
    assert default_node_id(root) == "gateway-7"
    (root / "etc/machine-id").write_text("0123456789abcdef\n")
    assert default_node_id(root) == "0123456789abcdef"
    assert default_node_id(Path("/"))  # this machine: machine-id or hostname


def test_a_configured_node_id_wins_over_discovery() -> None:
    node = discover(parse_config('{"nodeId": "main"}'), BOARDS / "rk3399")
    assert node.config.node_id == "main"
    assert discover(parse_config("{}"), BOARDS / "rk3399").config.node_id == "0f3e5a7c9b1d4e2f8a6c4b2d0e9f7a5c"


def test_runtimes_installed_that_can_run_on_the_cgroup_layout() -> None:
    assert detect_runtimes(lambda name: "/usr/bin/runc" if name == "runc" else None, "v2") == ("runc",)
    # Nothing installed: no runtime is offered, rather than a "container" runtime that cannot run.
    assert detect_runtimes(lambda name: None, "v2") == ()
    # crun 1.8 refuses hybrid cgroups: it is offered on v1/v2 nodes only; runc runs on all three.
    everything = lambda name: f"/usr/bin/{name}"  # noqa: E731
    assert detect_runtimes(everything, "v2") == ("crun", "runc")
    assert detect_runtimes(everything, "hybrid") == ("runc",)


def test_programs_are_looked_up_inside_another_root(tmp_path: Path) -> None:
    (tmp_path / "usr/sbin").mkdir(parents=True)
    runc = tmp_path / "usr/sbin/runc"
    runc.write_text("#!/bin/sh\n")
    find = which_under(tmp_path)
    assert find("runc") is None  # not executable
    os.chmod(runc, 0o755)
    assert find("runc") == "/usr/sbin/runc"
    assert find("crun") is None


def test_an_image_tree_with_runc_offers_it_and_one_without_offers_none(tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(BOARDS / "imx8mq", root, symlinks=True)
    assert discover(parse_config("{}"), root).runtimes.types == ()
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/runc").write_text("#!/bin/sh\n")
    os.chmod(root / "usr/bin/runc", 0o755)
    node = discover(parse_config("{}"), root)
    assert node.runtimes.types == ("runc",) and node.config.runtimes == ("runc",)


def test_the_system_log_is_journald_where_it_runs(tmp_path: Path) -> None:
    journalctl = lambda name: "/usr/bin/journalctl"  # noqa: E731
    assert detect_system_log(tmp_path, journalctl) == "/var/log/messages"
    (tmp_path / "run/systemd/journal").mkdir(parents=True)
    (tmp_path / "run/systemd/journal/socket").touch()
    assert detect_system_log(tmp_path, journalctl) == "journald"
    assert detect_system_log(tmp_path, lambda name: None) == "/var/log/messages"
    configured = discover(parse_config(json.dumps({"logging": {"systemLog": "/var/log/syslog"}})), tmp_path)
    assert configured.config.system_log == "/var/log/syslog"


def test_a_root_that_is_not_a_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a directory"):
        discover(parse_config("{}"), tmp_path / "missing")

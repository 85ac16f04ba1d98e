"""resources.cfg: clear problems naming the entry; valid entries still come through."""

from __future__ import annotations

import json
from pathlib import Path

from aos_sm.hw import load_resources

BOARDS = Path(__file__).resolve().parents[1] / "data" / "boards"


def _write(tmp_path: Path, document: object) -> Path:
    path = tmp_path / "resources.cfg"
    path.write_text(json.dumps(document))
    return path


def test_board_file_keeps_valid_drops_missing_device_and_wrong_types() -> None:
    root = BOARDS / "rk3399"
    result = load_resources(root / "etc/aos/resources.cfg", root)
    assert [(r.name, r.shared_count) for r in result.resources] == [("serial", 1), ("dbus", 0)]
    dbus = result.resources[1]
    assert dbus.mounts[0].destination == "/run/dbus" and dbus.mounts[0].options == ("rbind", "rw")
    assert dbus.envs == ("DBUS_SYSTEM_BUS_ADDRESS=unix:path=/run/dbus/system_bus_socket",)
    camera, broken = result.problems
    assert "resource 1 ('camera')" in camera and "/dev/video0" in camera and "not found" in camera
    assert "resource 3 ('broken')" in broken and "sharedCount" in broken and '"two"' in broken


def test_missing_file_is_no_resources_and_no_problem(tmp_path: Path) -> None:
    result = load_resources(tmp_path / "absent.cfg", tmp_path)
    assert result.resources == () and result.problems == ()


def test_invalid_json_is_one_clear_problem(tmp_path: Path) -> None:
    path = tmp_path / "resources.cfg"
    path.write_text('[{"name": "a",}]')
    result = load_resources(path, tmp_path)
    assert result.resources == ()
    (problem,) = result.problems
    assert "invalid JSON" in problem and "line 1" in problem and str(path) in problem


def test_not_an_array(tmp_path: Path) -> None:
    result = load_resources(_write(tmp_path, {"name": "a"}), tmp_path)
    assert result.resources == () and "JSON array" in result.problems[0]


def test_each_kind_of_bad_entry_is_named(tmp_path: Path) -> None:
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/ttyUSB0").write_text("")
    document = [
        {"name": "ok", "sharedCount": 2, "devices": ["/dev/ttyUSB0"], "hosts": [{"ip": "10.0.0.1", "hostName": "gw"}]},
        "just a string",
        {"sharedCount": 1},
        {"name": "groups", "groups": "video"},
        {"name": "host", "hosts": [{"ip": "not-an-ip", "hostName": "x"}]},
        {"name": "rel", "devices": ["ttyUSB0"]},
        {"name": "neg", "sharedCount": -1},
        {"name": "env", "envs": ["NOVALUE"]},
        {"name": "ok"},
        {"name": "mnt", "mounts": [{"type": "bind"}]},
        {"name": "Extra", "colour": "blue"},
    ]
    result = load_resources(_write(tmp_path, document), tmp_path)
    assert [r.name for r in result.resources] == ["ok", "Extra"]
    assert result.resources[0].hosts[0].hostname == "gw"
    problems = result.problems
    assert "resource 1:" in problems[0] and "must be an object" in problems[0]
    assert "resource 2:" in problems[1] and "`name`" in problems[1]
    assert "resource 3 ('groups')" in problems[2] and "`groups`" in problems[2]
    assert "resource 4 ('host')" in problems[3] and "not an IP address" in problems[3]
    assert "resource 5 ('rel')" in problems[4] and "absolute" in problems[4]
    assert "resource 6 ('neg')" in problems[5] and "sharedCount" in problems[5]
    assert "resource 7 ('env')" in problems[6] and "NAME=value" in problems[6]
    assert "resource 8 ('ok')" in problems[7] and "duplicate" in problems[7]
    assert "resource 9 ('mnt')" in problems[8] and "destination" in problems[8]
    assert "resource 10 ('Extra')" in problems[9] and "colour" in problems[9]
    assert all("dropped" in p for p in problems[:9])


def test_keys_are_case_insensitive_and_container_path_is_ignored_for_the_check(tmp_path: Path) -> None:
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/video0").write_text("")
    document = [{"Name": "cam", "SharedCount": 1, "Devices": ["/dev/video0:/dev/camera:rw"]}]
    result = load_resources(_write(tmp_path, document), tmp_path)
    assert result.problems == ()
    assert result.resources[0].device_host_paths() == ("/dev/video0",)

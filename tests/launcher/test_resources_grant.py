"""Granting requested resources: the pure planner with a fake device lookup, and the host adapter on
a fixture root with real device nodes (mknod needs root)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Dict, Sequence

import pytest

from aos_sm.agent.errors import AosCode, NotFound, ResourceUnavailable
from aos_sm.agent.launcher.itemconfig import ResourceRequest
from aos_sm.agent.launcher.resources import (DeviceGrant, DeviceMissing, HostDevice, HostResources, grant_resources,
                                             narrow_access, parse_group_file, parse_resources_document)
from aos_sm.hw.resources import Resource, ResourceMount

GROUPS = {"video": 44, "audio": 29}
OFFERED = {
    "camera": Resource("camera", groups=("video",), devices=("/dev/video0:/dev/cam:rw",), envs=("CAM=1",),
                       mounts=(ResourceMount("/opt/cam", "bind", "/srv/cam", ("ro",)),)),
    "sound": Resource("sound", groups=("audio", "video"), devices=("/dev/snd",), envs=("CAM=2",),
                      mounts=(ResourceMount("/opt/cam", "bind", "/srv/sound", ()),)),
    "ghost": Resource("ghost", devices=("/dev/missing",)),
    "nogroup": Resource("nogroup", groups=("wheel",)),
}
NODES: Dict[str, Sequence[HostDevice]] = {
    "/dev/video0": [HostDevice("", "c", 81, 0, 0o660, 0, 44)],
    "/dev/snd": [HostDevice("controlC0", "c", 116, 0, 0o660, 0, 29), HostDevice("pcm/p0", "c", 116, 16, 0o660, 0, 29)],
}


def lookup(path: str) -> Sequence[HostDevice]:
    if path not in NODES:
        raise DeviceMissing("not found on this node")
    return NODES[path]


def test_a_resource_gives_its_groups_devices_mounts_and_envs() -> None:
    grant = grant_resources([ResourceRequest("camera")], OFFERED, GROUPS, lookup)
    assert grant.additional_gids == (44,)
    assert grant.devices == (DeviceGrant("/dev/cam", "c", 81, 0, 0o660, 0, 44, "rw"),)
    assert grant.mounts == (ResourceMount("/opt/cam", "bind", "/srv/cam", ("ro",)),)
    assert grant.envs == ("CAM=1",)


def test_directories_map_below_the_container_path_and_later_resources_win() -> None:
    grant = grant_resources([ResourceRequest("camera"), ResourceRequest("sound", "r")], OFFERED, GROUPS, lookup)
    assert grant.additional_gids == (44, 29)
    assert [(d.path, d.access) for d in grant.devices] == [
        ("/dev/cam", "rw"), ("/dev/snd/controlC0", "r"), ("/dev/snd/pcm/p0", "r")]
    assert grant.mounts == (ResourceMount("/opt/cam", "bind", "/srv/sound", ()),)
    assert grant.envs == ("CAM=1", "CAM=2")


def test_the_request_mode_only_narrows_what_the_file_grants() -> None:
    assert narrow_access("rw", "rwm") == "rw"
    assert narrow_access("rwm", "mr") == "rm"
    assert narrow_access("rwm", None) == "rwm"
    with pytest.raises(ResourceUnavailable, match="grants 'rw', not 'm'"):
        grant_resources([ResourceRequest("camera", "m")], OFFERED, GROUPS, lookup)


def test_an_unknown_resource_is_not_found_without_an_alert() -> None:
    with pytest.raises(NotFound) as caught:
        grant_resources([ResourceRequest("radar")], OFFERED, GROUPS, lookup)
    assert not isinstance(caught.value, ResourceUnavailable)
    assert caught.value.to_error_info().aos_code == AosCode.NOT_FOUND
    assert "radar" in str(caught.value)


@pytest.mark.parametrize("name, reason", [("ghost", "device /dev/missing not found"), ("nogroup", "group wheel")])
def test_a_resource_the_node_cannot_give_is_unavailable_naming_it(name: str, reason: str) -> None:
    with pytest.raises(ResourceUnavailable, match=reason) as caught:
        grant_resources([ResourceRequest(name)], OFFERED, GROUPS, lookup)
    assert caught.value.resource == name
    assert caught.value.to_error_info().aos_code == AosCode.NOT_FOUND


def test_group_file_parsing() -> None:
    text = "root:x:0:\n# comment\nbroken\nvideo:x:44:alice\nvideo:x:99:\nodd:x:nan:\n"
    assert parse_group_file(text) == {"root": 0, "video": 44}


def test_resources_document_keeps_missing_device_entries_and_drops_invalid_ones() -> None:
    text = json.dumps([{"name": "a", "devices": ["/dev/nowhere"]}, {"name": "b", "sharedCount": -1}, {"NAME": "c"}])
    assert sorted(parse_resources_document(text)) == ["a", "c"]
    with pytest.raises(ValueError):
        parse_resources_document("{}")


# --- the host adapter on a fixture root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        pytest.skip("creating device nodes needs root (mknod)")
    base = tmp_path / "root"
    (base / "etc").mkdir(parents=True)
    (base / "etc" / "group").write_text("video:x:44:\n")
    (base / "dev" / "snd").mkdir(parents=True)
    nodes = (("video0", 0o660, stat.S_IFCHR, (81, 0)), ("snd/pcm", 0o640, stat.S_IFCHR, (116, 16)),
             ("sda", 0o600, stat.S_IFBLK, (8, 0)))
    for path, mode, kind, device in nodes:
        os.mknod(base / "dev" / path, mode | kind, os.makedev(*device))
        os.chmod(base / "dev" / path, mode)  # mknod applies the umask
    (base / "dev" / "snd" / "readme").write_text("not a device")
    (base / "dev" / "plain").write_text("not a device")
    (base / "dev" / "empty").mkdir()
    return base


def _config(tmp_path: Path, entries: object) -> Path:
    path = tmp_path / "resources.cfg"
    path.write_text(json.dumps(entries))
    return path


def test_host_resources_reads_groups_and_device_nodes_under_the_root(tmp_path: Path, root: Path) -> None:
    config = _config(tmp_path, [{"name": "cam", "groups": ["video"], "devices": ["/dev/video0", "/dev/snd:/dev/sound"]},
                                {"name": "disk", "devices": ["/dev/sda:/dev/sda:r"]}])
    grant = HostResources(config, root).grant([ResourceRequest("cam"), ResourceRequest("disk")])
    assert grant.additional_gids == (44,)
    assert grant.devices == (DeviceGrant("/dev/video0", "c", 81, 0, 0o660, 0, 0, "rwm"),
                             DeviceGrant("/dev/sound/pcm", "c", 116, 16, 0o640, 0, 0, "rwm"),
                             DeviceGrant("/dev/sda", "b", 8, 0, 0o600, 0, 0, "r"))


@pytest.mark.parametrize("device, reason", [("/dev/nothing", "not found"), ("/dev/plain", "not a device"),
                                            ("/dev/empty", "holds no device node")])
def test_host_resources_missing_devices_are_unavailable(tmp_path: Path, root: Path, device: str, reason: str) -> None:
    config = _config(tmp_path, [{"name": "x", "devices": [device]}])
    with pytest.raises(ResourceUnavailable, match=reason):
        HostResources(config, root).grant([ResourceRequest("x")])


def test_host_resources_without_a_config_file_knows_no_resource(tmp_path: Path, root: Path) -> None:
    resources = HostResources(tmp_path / "absent.cfg", root)
    assert resources.grant([]) == resources.grant(())
    with pytest.raises(NotFound, match="x is not in"):
        resources.grant([ResourceRequest("x")])
    (tmp_path / "bad.cfg").write_text("{not json")
    with pytest.raises(NotFound):
        HostResources(tmp_path / "bad.cfg", root).grant([ResourceRequest("x")])


def test_a_resource_gives_its_hosts_in_order_for_the_instances_etc_hosts() -> None:
    from aos_sm.hw.resources import ResourceHost

    offered = {"db": Resource("db", hosts=(ResourceHost("10.0.0.5", "db"), ResourceHost("10.0.0.6", "db2"))),
               "web": Resource("web", hosts=(ResourceHost("10.0.0.7", "web"),))}
    grant = grant_resources([ResourceRequest("web"), ResourceRequest("db")], offered, GROUPS, lookup)
    assert grant.hosts == (("10.0.0.7", "web"), ("10.0.0.5", "db"), ("10.0.0.6", "db2"))

"""SMInfo carries the probed numbers; runtime ids are UUID v3 (OID namespace) of "<type>-<nodeID>"."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

from aos_sm.agent.sminfo import build_sm_info, runtime_id
from aos_sm.hw import ResourcesResult, load_resources, probe_node
from aos_sm.hw.resources import Resource

BOARDS = Path(__file__).resolve().parent / "data" / "boards"


def _uuid3_by_hand(namespace: uuid.UUID, name: str) -> str:
    # RFC 4122 section 4.3: MD5 of namespace bytes + name, version 3, RFC 4122 variant.
    digest = bytearray(hashlib.md5(namespace.bytes + name.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x30
    digest[8] = (digest[8] & 0x3F) | 0x80
    text = digest.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def test_runtime_id_is_uuid3_of_type_dash_node() -> None:
    oid = uuid.UUID("6ba7b812-9dad-11d1-80b4-00c04fd430c8")  # RFC 4122 appendix C
    assert runtime_id("crun", "node0") == _uuid3_by_hand(oid, "crun-node0")
    assert runtime_id("crun", "node0") != runtime_id("runc", "node0")


def test_sm_info_carries_capacity_for_each_runtime() -> None:
    root = BOARDS / "rk3399"
    capacity = probe_node(root, cgroup_path="/aos")
    resources = load_resources(root / "etc/aos/resources.cfg", root)
    info = build_sm_info("node-7", ["crun", "runc"], capacity, resources)
    assert info.node_id == "node-7"
    assert [r.type for r in info.runtimes] == ["crun", "runc"]
    for runtime in info.runtimes:
        assert runtime.runtime_id == runtime_id(runtime.type, "node-7")
        assert runtime.max_dmips == round(2 * 1800 * 4.9 + 4 * 1416 * 2.3)
        assert runtime.allowed_dmips == round(4 * 1416 * 2.3)
        assert runtime.total_ram == capacity.total_ram > 0
        assert runtime.allowed_ram == 2 * 1024**3
        assert runtime.max_instances == 256
        assert (runtime.os_info.os, runtime.os_info.version) == ("linux", "6.1.0-13-arm64")
        assert "cgroup-hybrid" in runtime.os_info.features
        assert (runtime.arch_info.architecture, runtime.arch_info.variant) == ("aarch64", "v8")
    assert [(r.name, r.shared_count) for r in info.resources] == [("serial", 1), ("dbus", 0)]


def test_sm_info_max_instances_and_no_resources() -> None:
    capacity = probe_node(BOARDS / "imx8mq")
    info = build_sm_info("n", ["container"], capacity, ResourcesResult((), ()), max_instances=8)
    assert info.runtimes[0].max_instances == 8 and list(info.resources) == []
    info = build_sm_info("n", [], capacity, ResourcesResult((Resource("gpio", 3),), ()))
    assert list(info.runtimes) == [] and info.resources[0].shared_count == 3

"""SMInfo from probes + config (agent/registration.py): the probed numbers, CM's limits, capacity
semantics; runtime ids are UUID v3 (OID namespace) of "<type>-<nodeID>"."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from pathlib import Path

from aos_sm.agent.capacity import UsableRuntimes
from aos_sm.agent.config import parse_config
from aos_sm.agent.registration import Node, discover, load_node_resources, plan_registration
from aos_sm.agent.sminfo import runtime_id
from aos_sm.hw import ResourcesResult
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


def _node(board: str, **config: object) -> Node:
    settings = parse_config(json.dumps({"nodeId": "node-7", "runtimes": [{"type": "crun"}, {"type": "runc"}],
                                        "cgroupParent": "/aos", **config}))
    return discover(settings, BOARDS / board)


def test_sm_info_carries_probed_capacity_for_each_runtime() -> None:
    node = _node("rk3399", systemReserve={"dmipsPercent": 10, "ramPercent": 10})
    plan = plan_registration(node, load_node_resources(node))
    info = plan.sm_info
    assert info.node_id == "node-7"
    # crun refuses the board's hybrid cgroups: only runc registers (agent/capacity.py).
    assert [r.type for r in info.runtimes] == ["runc"]
    for runtime in info.runtimes:
        assert runtime.runtime_id == runtime_id(runtime.type, "node-7")
        assert runtime.max_dmips == round(2 * 1800 * 4.9 + 4 * 1416 * 2.3)
        assert runtime.allowed_dmips == round(4 * 1416 * 2.3)  # the /aos cpuset is below the 10 % reserve
        assert runtime.total_ram == node.capacity.total_ram > 0
        assert runtime.allowed_ram == 2 * 1024**3
        assert runtime.max_instances == 256
        assert (runtime.os_info.os, runtime.os_info.version) == ("linux", "6.1.0-13-arm64")
        assert "cgroup-hybrid" in runtime.os_info.features
        assert (runtime.arch_info.architecture, runtime.arch_info.variant) == ("arm64", "v8")
    assert [(r.name, r.shared_count) for r in info.resources] == [("serial", 1), ("dbus", 0)]
    assert plan.cuts == ()


def test_allowed_capacity_is_zero_unless_the_operator_reserves_it() -> None:
    """allowed_* > 0 switch CM to a fixed budget that ignores system load (PROTOCOL.md)."""
    plan = plan_registration(_node("rk3399"), ResourcesResult((), ()))
    (runtime,) = plan.sm_info.runtimes
    assert (runtime.allowed_dmips, runtime.allowed_ram) == (0, 0)
    assert runtime.max_dmips > 0 and runtime.total_ram > 0
    assert plan.capacity.allowed_dmips.value == 0 and "not reserved" in plan.capacity.allowed_dmips.source


def test_a_runtime_budget_is_sent_for_that_runtime_only() -> None:
    node = _node("imx8mq", runtimes=[{"type": "runc", "allowedDMIPS": 3000, "allowedRAM": 1 << 30},
                                     {"type": "crun"}])
    runc, crun = plan_registration(node, ResourcesResult((), ())).sm_info.runtimes
    assert (runc.type, runc.allowed_dmips, runc.allowed_ram) == ("runc", 3000, 1 << 30)
    assert (crun.type, crun.allowed_dmips, crun.allowed_ram) == ("crun", 0, 0)


def test_cm_limits_cut_resources_in_file_order_and_name_them() -> None:
    resources = ResourcesResult(tuple(Resource(f"res{i}", i) for i in range(6)) + (Resource("x" * 65),), ())
    plan = plan_registration(_node("imx8mq"), resources)
    assert [r.name for r in plan.sm_info.resources] == ["res0", "res1", "res2", "res3"]
    joined = "\n".join(plan.cuts)
    assert "'res4', 'res5' left out: CM accepts at most 4 resources" in joined
    assert "over CM's 64 chars" in joined


def test_more_than_four_runtimes_are_cut() -> None:
    node = _node("imx8mq")
    many = dataclasses.replace(node, runtimes=UsableRuntimes({f"id{i}": (f"rt{i}", f"/bin/rt{i}") for i in range(6)}))
    plan = plan_registration(many, ResourcesResult((), ()))
    assert [r.type for r in plan.sm_info.runtimes] == ["rt0", "rt1", "rt2", "rt3"]
    assert any("'rt4', 'rt5' left out" in cut for cut in plan.cuts)


def test_a_long_kernel_release_is_never_sent_and_a_configured_version_is() -> None:
    node = _node("imx8mq")
    long_release = "6.1.0-13-arm64-rt-with-vendor-patches-2026"
    assert len(long_release) > 32
    long_node = dataclasses.replace(node, capacity=dataclasses.replace(node.capacity, os_version=long_release))
    plan = plan_registration(long_node, ResourcesResult((), ()))
    assert plan.sm_info.runtimes[0].os_info.version == ""
    assert any("os version not sent" in cut for cut in plan.cuts)
    configured = _node("imx8mq", osVersion="bookworm-12.7")
    assert plan_registration(configured, ResourcesResult((), ())).sm_info.runtimes[0].os_info.version == "bookworm-12.7"


def test_architecture_overrides_replace_the_probe() -> None:
    node = _node("stm32mp157c-dk2", architecture="arm", architectureVariant="v7")
    runtime = plan_registration(node, ResourcesResult((), ())).sm_info.runtimes[0]
    assert (runtime.arch_info.architecture, runtime.arch_info.variant) == ("arm", "v7")
    probed = plan_registration(_node("stm32mp157c-dk2"), ResourcesResult((), ())).sm_info.runtimes[0]
    assert (probed.arch_info.architecture, probed.arch_info.variant) == ("arm", "v7")

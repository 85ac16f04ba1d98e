"""The runtime spec builder with an item config and granted resources (pure, no runc)."""

from __future__ import annotations

import json
import uuid
from typing import Any, Dict, List, Optional

import pytest

from aos_sm.agent.errors import Failed, InvalidArgument
from aos_sm.agent.launcher.bundle import (BundleSpec, CpuCapacity, aos_instance_id, build_runtime_spec,
                                          cpu_quota_us)
from aos_sm.agent.launcher.image import ImageConfig
from aos_sm.agent.launcher.itemconfig import ItemConfig, parse_item_config
from aos_sm.agent.launcher.resources import DeviceGrant, ResourceGrant
from aos_sm.hw.resources import ResourceMount

IMAGE = ImageConfig(("/bin/app",), (), ("A=image", "SHARED=image", "AOS_ITEM_ID=image"), "/", ())


def build(item: Optional[Dict[str, Any]] = None, **fields: Any) -> Dict[str, Any]:
    base: Dict[str, Any] = dict(rootfs="/r", hostname="container-id", cgroups_path="/aos/x", uid=5, gid=6,
                                item_id="item", subject_id="subject", instance_index=2,
                                item_config=parse_item_config(json.dumps(item or {}).encode()),
                                cpu=CpuCapacity(max_dmips=20000, cores=4))
    base.update(fields)
    return build_runtime_spec(IMAGE, BundleSpec(**base))


def env(spec: Dict[str, Any]) -> Dict[str, str]:
    return dict(entry.split("=", 1) for entry in spec["process"]["env"])


def mount(spec: Dict[str, Any], destination: str) -> Dict[str, Any]:
    (found,) = [m for m in spec["mounts"] if m["destination"] == destination]
    return found  # type: ignore[no-any-return]


def rlimits(spec: Dict[str, Any]) -> Dict[str, List[int]]:
    return {r["type"]: [r["soft"], r["hard"]] for r in spec["process"]["rlimits"]}


def test_without_item_config_the_defaults_apply() -> None:
    spec = build()
    assert spec["hostname"] == "container-id"
    assert rlimits(spec) == {"RLIMIT_NOFILE": [1024, 1024]}
    assert "size=67108864" in mount(spec, "/tmp")["options"]
    assert spec["linux"]["resources"] == {"devices": [{"allow": False, "access": "rwm"}]}
    assert "sysctl" not in spec["linux"] and "devices" not in spec["linux"]
    assert "additionalGids" not in spec["process"]["user"]


def test_every_quota_goes_into_the_spec() -> None:
    spec = build({"hostname": "svc", "sysctl": {"kernel.msgmax": 16384},
                  "quotas": {"cpuDMIPSLimit": 5000, "ramLimit": 64 << 20, "pidsLimit": 50, "noFileLimit": 200,
                             "tmpLimit": 8 << 20}})
    resources = spec["linux"]["resources"]
    # 5000 DMIPS of a 4-core 20000 DMIPS node: one core's worth, 100000 us per 100000 us period.
    assert resources["cpu"] == {"quota": 100000, "period": 100000}
    assert resources["memory"] == {"limit": 64 << 20}
    assert resources["pids"] == {"limit": 50}
    assert rlimits(spec) == {"RLIMIT_NOFILE": [200, 200], "RLIMIT_NPROC": [50, 50]}
    assert f"size={8 << 20}" in mount(spec, "/tmp")["options"]
    assert spec["hostname"] == "svc"
    assert spec["linux"]["sysctl"] == {"kernel.msgmax": "16384"}


@pytest.mark.parametrize("limit, cores, max_dmips, quota", [
    (5000, 4, 20000, 100000),
    (1, 4, 20000, 1000),  # at least 1000 us
    (10000, 2, 3000, 666666),  # integer division, and more than the node: several cores' worth
    (7, 1, 700, 1000),
    (333, 3, 1000, 99900),
])
def test_cpu_quota_follows_the_reference_formula(limit: int, cores: int, max_dmips: int, quota: int) -> None:
    assert cpu_quota_us(limit, CpuCapacity(max_dmips, cores)) == quota


def test_a_cpu_limit_without_the_node_dmips_fails_instead_of_running_unlimited() -> None:
    with pytest.raises(Failed, match="cpuDMIPSLimit"):
        build({"quotas": {"cpuDMIPSLimit": 100}}, cpu=None)
    with pytest.raises(Failed, match="maxDMIPS"):
        build({"quotas": {"cpuDMIPSLimit": 100}}, cpu=CpuCapacity(0, 2))


def test_environment_precedence_path_term_aos_image_resources_instance_info() -> None:
    grant = ResourceGrant(envs=("SHARED=resource", "R=resource", "TERM=vt100"))
    spec = build(resources=grant, env_vars=(("SHARED", "cm"),))
    names = [entry.split("=", 1)[0] for entry in spec["process"]["env"]]
    assert names[:6] == ["PATH", "TERM", "AOS_ITEM_ID", "AOS_SUBJECT_ID", "AOS_INSTANCE_INDEX", "AOS_INSTANCE_ID"]
    values = env(spec)
    instance_id = str(uuid.uuid3(uuid.NAMESPACE_OID, "item:subject:2"))
    assert values["AOS_ITEM_ID"] == "image"  # the image's Env comes after the AOS_* defaults
    assert values["AOS_SUBJECT_ID"] == "subject" and values["AOS_INSTANCE_INDEX"] == "2"
    assert values["AOS_INSTANCE_ID"] == instance_id
    assert values["TERM"] == "vt100" and values["A"] == "image" and values["R"] == "resource"
    assert values["SHARED"] == "cm"


def test_instance_id_is_uuid3_of_item_subject_instance_in_the_oid_namespace() -> None:
    # Fixed value: a change of the name format or namespace would silently rename every instance.
    assert aos_instance_id("item", "subject", 2) == str(uuid.uuid3(uuid.UUID("6ba7b812-9dad-11d1-80b4-00c04fd430c8"),
                                                                    "item:subject:2"))
    assert aos_instance_id("a", "b", 0) != aos_instance_id("a", "b", 1)


def test_granted_resources_add_gids_devices_rules_and_mounts() -> None:
    grant = ResourceGrant(
        additional_gids=(29, 44),
        devices=(DeviceGrant("/dev/cam", "c", 81, 0, 0o660, 0, 44, "rw"),),
        mounts=(ResourceMount("/opt/data", "", "/srv/data", ("ro",)),
                ResourceMount("/tmp", "tmpfs", "tmpfs", ("size=1m",)),
                ResourceMount("/storage", "bind", "/elsewhere", ("bind",))),
    )
    spec = build(resources=grant, storage_path="/data/st")
    assert spec["process"]["user"]["additionalGids"] == [29, 44]
    assert spec["linux"]["devices"] == [{"path": "/dev/cam", "type": "c", "major": 81, "minor": 0,
                                         "fileMode": 0o660, "uid": 0, "gid": 44}]
    assert spec["linux"]["resources"]["devices"] == [
        {"allow": False, "access": "rwm"}, {"allow": True, "type": "c", "major": 81, "minor": 0, "access": "rw"}]
    assert mount(spec, "/opt/data") == {"destination": "/opt/data", "type": "bind", "source": "/srv/data",
                                        "options": ["rbind", "ro"]}
    assert mount(spec, "/tmp")["options"] == ["size=1m"]  # a same destination replaces
    assert mount(spec, "/storage")["source"] == "/data/st"  # storage comes last and wins


def test_bad_instance_env_var_names_are_refused() -> None:
    with pytest.raises(InvalidArgument):
        build(env_vars=(("A=B", "x"),))


def test_the_default_item_config_is_the_empty_one() -> None:
    assert BundleSpec("/r", "h", "/x", 0, 0).item_config == ItemConfig()

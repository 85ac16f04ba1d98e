"""SMInfo registers only the runtimes that can start instances on this node."""

from __future__ import annotations

import json
from typing import Optional

from aos_sm.agent.capacity import usable_runtimes
from aos_sm.agent.config import parse_config
from aos_sm.agent.sminfo import runtime_id


def _which(name: str) -> Optional[str]:
    return {"runc": "/usr/sbin/runc", "crun": "/usr/bin/crun"}.get(name)


def _config(*types: str) -> str:
    return json.dumps({"nodeId": "n1", "runtimes": [{"type": kind} for kind in types]})


def test_runc_and_crun_on_a_v2_node_are_both_registered() -> None:
    usable = usable_runtimes(parse_config(_config("runc", "crun")), "v2", which=_which)
    assert usable.types == ("runc", "crun")
    assert usable.by_id[runtime_id("runc", "n1")] == ("runc", "/usr/sbin/runc")
    assert usable.problems == ()


def test_crun_on_hybrid_cgroups_and_unknown_or_missing_runtimes_are_left_out_and_named() -> None:
    usable = usable_runtimes(parse_config(_config("runc", "crun", "container")), "hybrid", which=_which)
    assert usable.types == ("runc",)
    assert len(usable.problems) == 2
    assert "crun" in usable.problems[0] and "hybrid" in usable.problems[0]
    assert "container is not an OCI runtime on PATH" in usable.problems[1]


def test_nothing_on_path_registers_nothing() -> None:
    usable = usable_runtimes(parse_config(_config("runc")), "v1", which=lambda name: None)
    assert usable.types == () and usable.by_id == {}
    assert usable.problems == ("runtime runc is configured but cannot start instances: runc is not an OCI runtime on PATH",)


def test_a_node_with_no_cgroup_hierarchy_mounted_registers_no_runtime() -> None:
    usable = usable_runtimes(parse_config(_config("runc")), "none", which=_which)
    assert usable.types == ()
    assert "no cgroup hierarchy is mounted" in usable.problems[0]

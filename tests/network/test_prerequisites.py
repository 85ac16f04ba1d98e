"""The traffic-control prerequisites (tbf, ingress, u32, mirred) asked of the kernel itself, in a
test namespace: what it has is present, and a kind it does not have is reported with why."""

from __future__ import annotations

from typing import Dict

import pytest

from netns import World

from aos_sm.agent.network.prerequisites import FEATURES, tc_kinds
from aos_sm.agent.network.rtnl import Rtnl


@pytest.mark.system
def test_the_kernels_traffic_control_kinds_are_found_and_a_missing_one_is_named(world: World) -> None:
    def probe() -> Dict[str, Dict[str, str]]:
        with Rtnl() as inside:
            return {"real": tc_kinds(inside), "fake": tc_kinds(inside, qdisc="aos-no-such-qdisc")}

    found = world.node.call(probe)
    # DEVELOPERS.md: this machine's kernel has tbf, ingress, mirred and u32.
    assert found["real"] == {"tbf": "", "ingress": "", "u32": "", "mirred": ""}
    assert "aos-no-such-qdisc qdisc" in found["fake"]["tbf"] and "No such file" in found["fake"]["tbf"]
    assert {"tbf", "ingress", "mirred", "u32", "ifb"} <= set(FEATURES)

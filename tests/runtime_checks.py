"""Whether this machine can register the runc runtime the tests configure, decided by the same
function the agent uses: SMInfo registers only runtimes that can start instances here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aos_sm.agent.capacity import usable_runtimes
from aos_sm.agent.config import parse_config
from aos_sm.hw.cgroups import probe_cgroup_layout


def skip_unless_runc_registers() -> None:
    """Skip, with the agent's own reason, where SMInfo rightly registers no runtime (no runc on
    PATH, no cgroup hierarchy mounted: the qemu-user chroot, a bare container)."""
    config = parse_config(json.dumps({"nodeId": "n", "runtimes": [{"type": "runc"}]}))
    usable = usable_runtimes(config, probe_cgroup_layout(Path("/")).mode)
    if not usable.types:
        pytest.skip(f"SMInfo rightly registers no runtime on this machine: {usable.problems[0]}")

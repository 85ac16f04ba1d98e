"""The node's capacity as the configuration asks for it: one call shared by `run` and `probe`,
so `aos-sm probe` prints exactly what the agent registers."""

from __future__ import annotations

from pathlib import Path

from aos_sm import hw

from .config import AgentConfig


def probe_capacity(config: AgentConfig, root: Path = Path("/")) -> hw.NodeCapacity:
    """Probe under ``root`` with the operator's override, the system reserve and the cgroup
    the workloads will run in (``cgroupParent``)."""
    return hw.probe_node(
        root,
        operator_max_dmips=config.max_dmips,
        reserve_dmips_percent=config.reserve_dmips_percent,
        reserve_ram_percent=config.reserve_ram_percent,
        cgroup_path=config.cgroup_parent,
    )

"""The node's capacity and runtimes as the configuration asks for them; agent/registration.py calls
these once for `run` and `probe` alike, so `aos-sm probe` prints exactly what the agent registers."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Tuple

from aos_sm import hw

from .config import OCI_RUNTIMES, AgentConfig
from .sminfo import runtime_id


def runtime_unusable(name: str, cgroup_mode: str) -> Optional[str]:
    """Why OCI runtime ``name`` cannot run containers on a node with this cgroup layout, or None.

    crun (1.8, Debian bookworm) refuses hybrid layouts ("cgroups in hybrid mode not supported");
    runc 1.1 runs on v1, hybrid and v2.
    """
    if cgroup_mode == "none":
        return "no cgroup hierarchy is mounted (mount cgroup2 on /sys/fs/cgroup)"
    if name == "crun" and cgroup_mode == "hybrid":
        return "crun does not support hybrid cgroups (v1 controllers plus a v2 tree)"
    return None


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


@dataclass(frozen=True)
class UsableRuntimes:
    """The configured runtimes this node can really run, and why each other one cannot."""

    by_id: Mapping[str, Tuple[str, str]]  # runtime_id -> (type, binary)
    problems: Tuple[str, ...] = ()

    @property
    def types(self) -> Tuple[str, ...]:
        return tuple(kind for kind, _ in self.by_id.values())


def usable_runtimes(config: AgentConfig, cgroup_mode: str,
                    which: Callable[[str], Optional[str]] = shutil.which) -> UsableRuntimes:
    """Only runtimes that can start instances here are registered in SMInfo (so CM never
    schedules onto one that cannot): an OCI runtime on PATH that supports the node's cgroup
    layout. A configured runtime that fails that is left out and named in ``problems``."""
    by_id: Dict[str, Tuple[str, str]] = {}
    problems: List[str] = []
    for kind in config.runtimes:
        binary = which(kind) if kind in OCI_RUNTIMES else None
        problem = runtime_unusable(kind, cgroup_mode) if binary else f"{kind} is not an OCI runtime on PATH"
        if binary is None or problem is not None:
            problems.append(f"runtime {kind} is configured but cannot start instances: {problem}")
            continue
        by_id[runtime_id(kind, config.node_id)] = (kind, binary)
    return UsableRuntimes(by_id, tuple(problems))

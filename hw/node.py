"""A node's capacity: what SMInfo tells CM this node can run, and how sure each number is.

max_dmips is every online core's DMIPS (or the operator's `maxDMIPS`). allowed_dmips and
allowed_ram are what the workloads may use: net of the cgroup they run in (cpuset, CPU quota,
memory limit) and of a system reserve, a percentage of the node kept for everything else. The
reserve and the cgroup are both caps, so the smaller wins: a cgroup that already leaves the system
half the cores leaves room for the reserve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ._read import LIVE_ROOT
from .cgroup_limits import CgroupLimits, read_cgroup_limits
from .cgroups import CgroupLayout, probe_cgroup_layout
from .cpu import CoreInfo, dmips_provenance, probe_cores, total_dmips
from .memory import read_meminfo
from .osinfo import probe_os_arch


@dataclass(frozen=True)
class NodeCapacity:
    cpus: tuple[CoreInfo, ...]
    max_dmips: int
    allowed_dmips: int
    dmips_provenance: str  # weakest provenance of the counted cores, or `operator`
    total_ram: int  # bytes
    allowed_ram: int  # bytes
    os_name: str
    os_version: str
    os_features: tuple[str, ...]
    architecture: str  # GOARCH, as CM compares it with image configs (hw/osinfo.py)
    arch_variant: str
    cgroups: CgroupLayout
    cgroup_limits: CgroupLimits
    usable_cpus: tuple[int, ...]  # online and in the workloads' cpuset
    warnings: tuple[str, ...]
    machine: str = ""  # `uname -m`, for people only


def quota_dmips(cores: list[CoreInfo], quota_cpus: float) -> float:
    """The most DMIPS a CPU-time quota of `quota_cpus` CPUs can buy: the fastest cores first.

    A quota limits time, not which cores; on big.LITTLE the workloads may land on the big cores,
    so the bound is the `quota_cpus` fastest usable cores (the last one fractionally).
    """
    remaining, total = quota_cpus, 0.0
    for core in sorted(cores, key=lambda c: c.dmips, reverse=True):
        share = min(1.0, remaining)
        if share <= 0:
            break
        total += core.dmips * share
        remaining -= share
    return total


def _check_percent(name: str, value: float) -> float:
    if not 0 <= value < 100:
        raise ValueError(f"{name} must be in [0, 100), got {value}")
    return value


def probe_node(
    root: Path = LIVE_ROOT,
    *,
    operator_max_dmips: int | None = None,
    reserve_dmips_percent: float = 0.0,
    reserve_ram_percent: float = 0.0,
    cgroup_path: str | None = None,
) -> NodeCapacity:
    """Probe the system under `root`. Degraded figures are explained in `warnings`; only invalid
    arguments raise (ValueError)."""
    reserve_cpu = _check_percent("reserve_dmips_percent", reserve_dmips_percent) / 100
    reserve_ram = _check_percent("reserve_ram_percent", reserve_ram_percent) / 100
    if operator_max_dmips is not None and operator_max_dmips <= 0:
        raise ValueError(f"operator_max_dmips must be positive, got {operator_max_dmips}")

    cores, core_warnings = probe_cores(root)
    warnings = list(core_warnings)
    layout = probe_cgroup_layout(root, cgroup_path)
    limits = read_cgroup_limits(root, layout)
    warnings.extend(limits.problems)
    if layout.mode == "hybrid" and not any(version == 2 for _, version in layout.limiting):
        held = ", ".join(layout.v2_controllers) or "nothing"
        warnings.append(f"hybrid cgroups: the v2 tree holds {held}; cpu, cpuset and memory are limited through v1")
    for name in ("cpu", "cpuset", "memory"):
        if layout.limiter(name) is None:
            warnings.append(f"no cgroup hierarchy has the {name} controller: workloads cannot be limited by it")

    online = [c for c in cores if c.online]
    usable = [c for c in online if limits.cpuset is None or c.index in limits.cpuset]
    if not usable:
        warnings.append("the workloads' cpuset has no online CPU; counting every online CPU")
        usable = online
    measured_max = total_dmips(cores)
    cgroup_dmips = total_dmips(tuple(usable))
    if limits.cpu_quota_cpus is not None:
        cgroup_dmips = min(cgroup_dmips, quota_dmips(usable, limits.cpu_quota_cpus))

    if operator_max_dmips is not None:
        max_dmips, provenance = float(operator_max_dmips), "operator"
        # The operator states the node's total; the cgroup still takes its share of it.
        cgroup_dmips = max_dmips * (cgroup_dmips / measured_max if measured_max else 1.0)
    else:
        max_dmips, provenance = measured_max, dmips_provenance(cores)
    allowed_dmips = min(cgroup_dmips, max_dmips * (1 - reserve_cpu))

    meminfo = read_meminfo(root)
    total_ram = meminfo.get("MemTotal", 0)
    if total_ram <= 0:
        warnings.append("/proc/meminfo has no MemTotal: total RAM unknown (0)")
    ram_cap = total_ram * (1 - reserve_ram)
    if limits.memory_limit is not None:
        ram_cap = min(ram_cap, limits.memory_limit)

    os_arch = probe_os_arch(root)
    if not os_arch.architecture:
        warnings.append("architecture unknown: no uname and no /proc/sys/kernel/arch")
    return NodeCapacity(
        cpus=cores, max_dmips=round(max_dmips), allowed_dmips=round(allowed_dmips),
        dmips_provenance=provenance, total_ram=total_ram, allowed_ram=math.floor(ram_cap),
        os_name=os_arch.os_name, os_version=os_arch.os_version, os_features=layout.features,
        architecture=os_arch.architecture, arch_variant=os_arch.arch_variant, cgroups=layout,
        cgroup_limits=limits, usable_cpus=tuple(c.index for c in usable), warnings=tuple(warnings),
        machine=os_arch.machine,
    )

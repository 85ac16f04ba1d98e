"""The limits a cgroup puts on its workloads: cpuset, CPU quota, memory limit.

v1 files are read through cgroupspy (its controllers know the v1 file names and the `-1` =
unlimited convention); cgroupspy understands only v1 (HARDWARE.md), so v2 files are read directly.
cgroupspy's trees assume controllers under one fixed directory and `Tree(sub_groups=...)` creates
missing cgroups, so we never build trees: we make one cgroupspy Node per directory (a root Node's
full path is its name), which also lets us read fixture roots and any mount point name.

Limits are hierarchical: an ancestor's quota or memory limit binds its descendants, so both are
the minimum over the workloads' cgroup and every ancestor up to the mount (cgroup-v1/memory.rst
"hierarchy support"; cgroup-v2.rst "Top-down constraint"). The workloads' cgroup may not exist yet;
then its nearest existing ancestor speaks for it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cgroupspy.controllers import CpuController, CpuSetController, MemoryController  # type: ignore[import-untyped]
from cgroupspy.nodes import Node  # type: ignore[import-untyped]

from ._read import parse_cpu_list, under
from .cgroups import CgroupLayout, CgroupMount

# memory.limit_in_bytes reads PAGE_COUNTER_MAX x PAGE_SIZE when unlimited (9223372036854771712 on
# 4 KiB pages, mm/page_counter.c); anything this large is "no limit".
_UNLIMITED_BYTES = 1 << 62


@dataclass(frozen=True)
class CgroupLimits:
    """None = no limit (or it could not be read; see `problems`)."""

    cpuset: frozenset[int] | None
    cpu_quota_cpus: float | None  # quota / period: how many CPUs' worth of time
    memory_limit: int | None  # bytes
    problems: tuple[str, ...]


def _directories(root: Path, mount: CgroupMount, cgroup_path: str) -> list[Path]:
    """Existing directories from the workloads' cgroup up to the mount point, deepest first."""
    relative = cgroup_path
    if mount.root != "/" and (relative + "/").startswith(mount.root.rstrip("/") + "/"):
        relative = relative[len(mount.root.rstrip("/")):]  # the mount shows only that subtree
    top = under(root, mount.mount_point)
    parts = [p for p in relative.split("/") if p and p not in (".", "..")]
    candidates = [top.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]
    return [d for d in candidates if d.is_dir()]


def _v1_value(controller_class: type, directory: Path, attribute: str, problems: list[str]) -> object:
    """One cgroupspy controller attribute; None when missing, unreadable or malformed.

    cgroupspy already maps ENOENT/EACCES/EINVAL to None; garbage content raises ValueError.
    """
    try:
        return getattr(controller_class(Node(os.fsencode(directory))), attribute)
    except (OSError, ValueError) as err:
        problems.append(f"{directory}: cannot read {attribute}: {err}; ignored")
        return None


def _read_v1(root: Path, layout: CgroupLayout, problems: list[str]) -> tuple[frozenset[int] | None, float | None, int | None]:
    cpuset: frozenset[int] | None = None
    quota: float | None = None
    memory: int | None = None
    if layout.limiter("cpuset") == 1 and (mount := layout.mount_for("cpuset")):
        for directory in _directories(root, mount, layout.path_for("cpuset")):
            cpus = _v1_value(CpuSetController, directory, "cpus", problems)
            if isinstance(cpus, set) and cpus:  # a new v1 cpuset is empty until configured
                cpuset = frozenset(c for c in cpus if isinstance(c, int))
                break
    if layout.limiter("cpu") == 1 and (mount := layout.mount_for("cpu")):
        for directory in _directories(root, mount, layout.path_for("cpu")):
            limit = _v1_value(CpuController, directory, "cfs_quota_us", problems)  # None when -1
            period = _v1_value(CpuController, directory, "cfs_period_us", problems)
            if isinstance(limit, int) and isinstance(period, int) and limit > 0 and period > 0:
                quota = min(quota, limit / period) if quota is not None else limit / period
    if layout.limiter("memory") == 1 and (mount := layout.mount_for("memory")):
        for directory in _directories(root, mount, layout.path_for("memory")):
            value = _v1_value(MemoryController, directory, "limit_in_bytes", problems)
            if isinstance(value, int) and 0 < value < _UNLIMITED_BYTES:
                memory = min(memory, value) if memory is not None else value
    return cpuset, quota, memory


def _read_file(directory: Path, name: str) -> str | None:
    try:
        return (directory / name).read_text(encoding="utf-8").strip()
    except OSError:
        return None


def parse_cpu_max(text: str) -> float | None:
    """cgroup v2 `cpu.max` ("max 100000" or "50000 100000") as CPUs' worth; None = no limit."""
    fields = text.split()
    if not fields or fields[0] == "max":
        return None
    try:
        quota = int(fields[0])
        period = int(fields[1]) if len(fields) > 1 else 100000  # default period, cgroup-v2.rst
    except ValueError:
        raise ValueError(f"malformed cpu.max {text!r}") from None
    if quota <= 0 or period <= 0:
        raise ValueError(f"malformed cpu.max {text!r}")
    return quota / period


def parse_memory_max(text: str) -> int | None:
    """cgroup v2 `memory.max` ("max" or bytes); None = no limit."""
    if text.strip() == "max":
        return None
    value = int(text)  # ValueError on garbage, reported by the caller
    return value if 0 < value < _UNLIMITED_BYTES else None


def _read_v2(root: Path, layout: CgroupLayout, problems: list[str]) -> tuple[frozenset[int] | None, float | None, int | None]:
    cpuset: frozenset[int] | None = None
    quota: float | None = None
    memory: int | None = None
    mount = next((m for m in layout.mounts if m.version == 2), None)
    if mount is None:
        return None, None, None
    directories = _directories(root, mount, layout.path_for(""))
    if layout.limiter("cpuset") == 2:
        for directory in directories:
            text = _read_file(directory, "cpuset.cpus.effective")
            parsed = parse_cpu_list(text) if text is not None else None
            if text is not None and parsed is None:
                problems.append(f"{directory}/cpuset.cpus.effective malformed: {text!r}")
            if parsed:
                cpuset = parsed
                break
    for directory in directories:
        for name, limiter in (("cpu.max", "cpu"), ("memory.max", "memory")):
            text = _read_file(directory, name) if layout.limiter(limiter) == 2 else None
            if text is None:
                continue
            try:
                if name == "cpu.max" and (value := parse_cpu_max(text)) is not None:
                    quota = min(quota, value) if quota is not None else value
                elif name == "memory.max" and (number := parse_memory_max(text)) is not None:
                    memory = min(memory, number) if memory is not None else number
            except ValueError:
                problems.append(f"{directory}/{name} malformed: {text!r}; ignored")
    return cpuset, quota, memory


def read_cgroup_limits(root: Path, layout: CgroupLayout) -> CgroupLimits:
    """The workloads' limits, from whichever hierarchy can limit each controller."""
    problems: list[str] = []
    v1 = _read_v1(root, layout, problems)
    v2 = _read_v2(root, layout, problems)
    # A controller is limited by exactly one hierarchy, so at most one side is not None.
    return CgroupLimits(
        cpuset=v1[0] if v1[0] is not None else v2[0],
        cpu_quota_cpus=v1[1] if v1[1] is not None else v2[1],
        memory_limit=v1[2] if v1[2] is not None else v2[2],
        problems=tuple(problems),
    )

"""Usage counters for monitoring: node CPU times, network bytes, default routes, cgroup usage.

Parsers take text, readers take a root (tests point them at fixture trees). Every reader returns
None when its file is missing or malformed: the monitor reports that figure as unknown and says so
in a (rate-limited) CoreAlert instead of crashing the poll.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cgroupspy.controllers import CpuAcctController, MemoryController  # type: ignore[import-untyped]
from cgroupspy.nodes import Node  # type: ignore[import-untyped]

from ._read import LIVE_ROOT, read_text, under
from .cgroups import CgroupLayout, CgroupMount

# --------------------------------------------------------------------------------------------
# /proc/stat
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CpuTimes:
    """Cumulative CPU time of every CPU together, in USER_HZ ticks."""

    busy: int
    total: int


def parse_proc_stat_cpu(text: str) -> CpuTimes | None:
    """The aggregate `cpu` line of /proc/stat (Documentation/filesystems/proc.rst, 1.8).

    Columns: user nice system idle iowait irq softirq steal guest guest_nice. guest and guest_nice
    are already counted in user and nice (kernel/sched/cputime.c account_guest_time), so only the
    first eight add up to the total, as psutil's cpu_percent does. iowait counts as idle.
    """
    for line in text.splitlines():
        fields = line.split()
        if not fields or fields[0] != "cpu":
            continue
        try:
            values = [int(v) for v in fields[1:9]]
        except ValueError:
            return None
        if len(values) < 4:
            return None
        total = sum(values)
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        return CpuTimes(busy=total - idle, total=total)
    return None


def read_cpu_times(root: Path = LIVE_ROOT) -> CpuTimes | None:
    text = read_text(root, "/proc/stat")
    return parse_proc_stat_cpu(text) if text is not None else None


def busy_fraction(before: CpuTimes, after: CpuTimes) -> float:
    """Share of all CPUs busy between two readings, in [0, 1]; 0 when no time passed."""
    total = after.total - before.total
    if total <= 0:
        return 0.0
    return min(1.0, max(0.0, (after.busy - before.busy) / total))


# --------------------------------------------------------------------------------------------
# /proc/net/dev and /proc/net/route
# --------------------------------------------------------------------------------------------


def parse_net_dev(text: str) -> dict[str, tuple[int, int]]:
    """`{interface: (received bytes, transmitted bytes)}` from /proc/net/dev.

    Format (net/core/net-procfs.c dev_seq_printf_stats): two header lines, then
    `name: rx_bytes rx_packets ... (8 receive columns) tx_bytes ...`.
    """
    counters: dict[str, tuple[int, int]] = {}
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        fields = rest.split()
        if not sep or len(fields) < 9:
            continue
        try:
            counters[name.strip()] = (int(fields[0]), int(fields[8]))
        except ValueError:
            continue
    return counters


def read_net_dev(root: Path = LIVE_ROOT) -> dict[str, tuple[int, int]] | None:
    text = read_text(root, "/proc/net/dev")
    return parse_net_dev(text) if text is not None else None


_RTF_UP = 0x1


def parse_default_route_interfaces(text: str) -> tuple[str, ...]:
    """Interfaces that carry an IPv4 default route, from /proc/net/route (route(8)).

    Columns: Iface Destination Gateway Flags ... Mask; hex, host byte order. A default route has
    destination and mask 0 and the RTF_UP flag.
    """
    found: list[str] = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            destination, flags, mask = int(fields[1], 16), int(fields[3], 16), int(fields[7], 16)
        except ValueError:
            continue
        if destination == 0 and mask == 0 and flags & _RTF_UP and fields[0] not in found:
            found.append(fields[0])
    return tuple(found)


def read_default_route_interfaces(root: Path = LIVE_ROOT) -> tuple[str, ...]:
    text = read_text(root, "/proc/net/route")
    return parse_default_route_interfaces(text) if text is not None else ()


# --------------------------------------------------------------------------------------------
# cgroup usage (v1 through cgroupspy, v2 from the unified files)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CgroupUsage:
    cpu_usec: int | None  # cumulative CPU time of the cgroup's tasks, microseconds
    memory_bytes: int | None


@dataclass(frozen=True)
class CgroupDirs:
    """Where one cgroup's usage files are, per controller, and in which hierarchy version."""

    cpu: tuple[int, Path] | None
    memory: tuple[int, Path] | None


def parse_cpu_stat_usage_usec(text: str) -> int | None:
    """`usage_usec` of a v2 `cpu.stat` (Documentation/admin-guide/cgroup-v2.rst, "CPU").

    The v2 kernel keeps cpu.stat's usage fields in every cgroup, even without the cpu controller
    enabled (since 5.8, cgroup_base_stat_cputime_show), which is what a hybrid node's empty v2
    tree offers.
    """
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _below_mount_root(mount: CgroupMount, relative: str) -> str:
    """The cgroup's path under a mount that shows only a subtree (mountinfo field 4, e.g. inside
    a container whose hierarchy root is `/docker/<id>`)."""
    path = "/" + relative.strip("/")
    mount_root = mount.root.rstrip("/")
    if mount_root and (path + "/").startswith(mount_root + "/"):
        path = path[len(mount_root):]
    return path.strip("/")


def resolve_cgroup_dirs(layout: CgroupLayout, relative: str, root: Path = LIVE_ROOT) -> CgroupDirs:
    """The directories of cgroup `relative` (same path in every hierarchy, e.g. `aos-sm/x`).

    CPU time comes from v1 `cpuacct` where that controller is mounted as v1, else from v2; memory
    from v1 `memory` where mounted as v1, else from v2 (where `memory` must be enabled).
    """
    def place(controller: str) -> tuple[int, Path] | None:
        v1 = [m for m in layout.mounts if m.version == 1 and controller in m.controllers]
        v2 = [m for m in layout.mounts if m.version == 2]
        for version, mounts in ((1, v1), (2, v2)):
            if mounts:
                return version, under(root, mounts[0].mount_point) / _below_mount_root(mounts[0], relative)
        return None

    return CgroupDirs(cpu=place("cpuacct"), memory=place("memory"))


def _read_v1(directory: Path, controller: str) -> int | None:
    """v1 counters through cgroupspy's controllers (the design card's v1 library).

    cgroupspy's tree walks a whole hierarchy on construction and derives the controller from the
    mount directory's name, which fails for combined mounts (`cpu,cpuacct`); so a one-node tree
    whose name is the cgroup's full path is built and the controller class applied to it directly.
    """
    node = Node(os.fsencode(directory))
    try:
        if controller == "cpuacct":
            return int(CpuAcctController(node).usage) // 1000  # cpuacct.usage is nanoseconds
        return int(MemoryController(node).usage_in_bytes)
    except (OSError, ValueError, TypeError):
        return None


def _read_v2_cpu(directory: Path) -> int | None:
    try:
        return parse_cpu_stat_usage_usec((directory / "cpu.stat").read_text())
    except OSError:
        return None


def _read_v2_memory(directory: Path) -> int | None:
    try:
        return int((directory / "memory.current").read_text().strip())
    except (OSError, ValueError):
        return None


def read_cgroup_usage(dirs: CgroupDirs) -> CgroupUsage:
    cpu = memory = None
    if dirs.cpu is not None:
        version, directory = dirs.cpu
        cpu = _read_v1(directory, "cpuacct") if version == 1 else _read_v2_cpu(directory)
    if dirs.memory is not None:
        version, directory = dirs.memory
        memory = _read_v1(directory, "memory") if version == 1 else _read_v2_memory(directory)
    return CgroupUsage(cpu_usec=cpu, memory_bytes=memory)

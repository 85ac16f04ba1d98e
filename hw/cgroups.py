"""Which cgroup hierarchies are mounted and which controllers can actually limit.

Layouts (Documentation/admin-guide/cgroup-v2.rst, "Mounting"; systemd "hybrid" mode):
- v1: one `cgroup` mount per controller set, e.g. `/sys/fs/cgroup/memory` with option `memory`.
- v2: one `cgroup2` mount; `cgroup.controllers` at its root lists the controllers it owns.
- hybrid: v1 controllers plus a `cgroup2` tree (systemd's `/sys/fs/cgroup/unified`). A controller
  is bound to one hierarchy at a time, so one that sits in v1 cannot limit through v2; a v2 tree
  whose `cgroup.controllers` is empty limits nothing.
Mounts come from /proc/self/mountinfo (Documentation/filesystems/proc.rst, section 3.5).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ._read import read_text

# The controllers whose limits size a node (cpuset.cpus, cpu quota, memory limit).
LIMITING_CONTROLLERS = ("cpu", "cpuset", "memory")

# v1 controller names as mount options (Documentation/admin-guide/cgroup-v1/cgroups.rst).
_V1_CONTROLLERS = frozenset({
    "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "net_cls", "net_prio", "blkio",
    "perf_event", "hugetlb", "pids", "rdma", "misc",
})


@dataclass(frozen=True)
class MountEntry:
    """One line of /proc/self/mountinfo (the fields we use)."""

    root: str  # field 4: the directory of the filesystem mounted here (a cgroup subtree)
    mount_point: str  # field 5, absolute in the probed system
    fs_type: str
    super_options: tuple[str, ...]


@dataclass(frozen=True)
class CgroupMount:
    version: int  # 1 or 2
    mount_point: str
    root: str
    controllers: tuple[str, ...]


@dataclass(frozen=True)
class CgroupLayout:
    """The cgroup layout of a node and where the workloads' cgroup lives in it."""

    mode: str  # "v1" | "v2" | "hybrid" | "none"
    mounts: tuple[CgroupMount, ...]
    v1_controllers: tuple[str, ...]
    v2_controllers: tuple[str, ...]  # usable through v2 (not bound to a v1 hierarchy)
    limiting: tuple[tuple[str, int], ...]  # (controller, cgroup version that can limit it)
    paths: tuple[tuple[str, str], ...]  # (controller or "" for v2, cgroup path) of the workloads

    def limiter(self, controller: str) -> int | None:
        """1 or 2: which hierarchy can limit `controller`; None when none can."""
        return dict(self.limiting).get(controller)

    def path_for(self, controller: str) -> str:
        """The workloads' cgroup path for a controller (v2 path for v2 controllers)."""
        paths = dict(self.paths)
        key = controller if self.limiter(controller) == 1 else ""
        return paths.get(key, paths.get("", "/"))

    def mount_for(self, controller: str) -> CgroupMount | None:
        version = self.limiter(controller)
        for mount in self.mounts:
            if mount.version == version and (version == 2 or controller in mount.controllers):
                return mount
        return None

    @property
    def features(self) -> tuple[str, ...]:
        """For os_info.features: `cgroup-hybrid`, then `cgroup-memory-v1`... per limiting controller."""
        if self.mode == "none":
            return ()
        return (f"cgroup-{self.mode}",) + tuple(f"cgroup-{name}-v{ver}" for name, ver in self.limiting)


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (`\\040`)."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def parse_mountinfo(text: str) -> tuple[MountEntry, ...]:
    """Mount entries; malformed lines are skipped.

    Format: `id parent major:minor root mount-point options [optional...] - fstype source super-options`.
    The optional fields vary in number, so the `-` separator is searched for.
    """
    entries: list[MountEntry] = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        dash = fields.index("-")
        if dash < 6 or len(fields) < dash + 3:
            continue
        entries.append(MountEntry(
            root=_unescape(fields[3]), mount_point=_unescape(fields[4]), fs_type=fields[dash + 1],
            super_options=tuple(fields[dash + 3].split(",")) if len(fields) > dash + 3 else (),
        ))
    return tuple(entries)


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """/proc/self/cgroup as {controller: path}; the v2 line (`0::/path`) is under key "".

    Format: `hierarchy-id:controller-list:path` (cgroups(7)). Named hierarchies (`name=systemd`)
    are kept under their name.
    """
    paths: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path.strip() or "/"
    return paths


def cgroup_mounts(entries: tuple[MountEntry, ...], root: Path) -> tuple[CgroupMount, ...]:
    """The cgroup mounts among `entries`; v2 controllers read from `cgroup.controllers` under root."""
    mounts: list[CgroupMount] = []
    for entry in entries:
        if entry.fs_type == "cgroup":
            controllers = tuple(o for o in entry.super_options if o in _V1_CONTROLLERS)
            mounts.append(CgroupMount(1, entry.mount_point, entry.root, controllers))
        elif entry.fs_type == "cgroup2":
            text = read_text(root, f"{entry.mount_point.rstrip('/')}/cgroup.controllers") or ""
            mounts.append(CgroupMount(2, entry.mount_point, entry.root, tuple(text.split())))
    return tuple(mounts)


def _normalise(path: str) -> str:
    return "/" + path.strip("/")


def probe_cgroup_layout(root: Path, cgroup_path: str | None = None) -> CgroupLayout:
    """The layout under `root`; the workloads' cgroup is `cgroup_path` if given, else our own.

    `cgroup_path` is relative to each hierarchy's root (`/aos`, `aos.slice/x`).
    """
    mountinfo = read_text(root, "/proc/self/mountinfo") or ""
    mounts = cgroup_mounts(parse_mountinfo(mountinfo), root)
    v1 = tuple(sorted({c for m in mounts if m.version == 1 for c in m.controllers}))
    v2 = tuple(sorted({c for m in mounts if m.version == 2 for c in m.controllers} - set(v1)))
    has_v1 = any(m.version == 1 for m in mounts)
    has_v2 = any(m.version == 2 for m in mounts)
    mode = "hybrid" if has_v1 and has_v2 else "v1" if has_v1 else "v2" if has_v2 else "none"
    limiting = tuple(
        (name, 1 if name in v1 else 2) for name in LIMITING_CONTROLLERS if name in v1 or name in v2
    )
    if cgroup_path is not None:
        own = {key: _normalise(cgroup_path) for key in ("", *LIMITING_CONTROLLERS)}
    else:
        own = parse_proc_cgroup(read_text(root, "/proc/self/cgroup") or "")
    paths = tuple(sorted((key, _normalise(value)) for key, value in own.items()))
    return CgroupLayout(mode, mounts, v1, v2, limiting, paths)

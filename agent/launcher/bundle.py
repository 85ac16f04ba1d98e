"""The OCI runtime spec (``config.json``) of an instance, from its image, item config and InstanceInfo.

Pure: no I/O. Choices, each for a reason:
- The root is the instance's read-only overlay (``rootfs.py``: its own top layer, the image
  layers, the kept host directories): instances of one image must not change each other's files.
  ``/tmp`` is a private tmpfs for scratch files, sized by the item config's ``tmpLimit`` or 64 MiB
  (the reference gives no writable ``/tmp`` without it; an unbounded tmpfs would let one instance
  fill the node's RAM). The host's ``/etc/ssl`` and ``/etc/nsswitch.conf`` are bound read-only
  (``host_binds``: those that exist), as in the reference.
- ``storage_path`` is bound read-write at ``/storage`` and ``state_path`` at ``/state.dat``
  (always a file), where the reference SM puts them; they win over a resource mount of the same
  destination, as in the reference (state and storage come last).
- The process runs as InstanceInfo's uid/gid (CM allocates them per instance), not the image's
  ``User``, with the requested resources' groups as extra gids; ``noNewPrivileges`` and runc's
  default unprivileged capability set.
- Environment (INSTANCES.md, last wins): ``PATH``, ``TERM=xterm``, ``AOS_ITEM_ID``,
  ``AOS_SUBJECT_ID``, ``AOS_INSTANCE_INDEX``, ``AOS_INSTANCE_ID``, then the image's ``Env``, then
  resource ``envs``, then InstanceInfo ``env_vars``.
- Item config quotas (reference container/instance.cpp): ``cpuDMIPSLimit`` becomes a CFS quota of
  limit x 100000 x cores / node max DMIPS (integer division, at least 1000) per 100000 us period;
  ``ramLimit`` the memory limit; ``pidsLimit`` the pids limit and ``RLIMIT_NPROC``;
  ``noFileLimit`` ``RLIMIT_NOFILE`` (1024 without it); ``sysctl`` and ``hostname`` as given.
- Requested devices: a node in the container and a device-cgroup allow rule with the granted
  access, after the default deny-all.
- ``priority`` (higher = more important) lowers ``oomScoreAdj`` so the kernel kills low-priority
  instances first under memory pressure: ``-min(priority, 999)``; never -1000, which would make
  an instance unkillable.
- The container joins new pid, ipc, uts and mount namespaces, and the network namespace the
  network manager made for it (``netns``; loopback only without network parameters). Without a
  network manager (disabled) networking is the agent's own, and runc refuses ``net.*`` sysctls.
- A networked instance's ``/etc/hosts`` and ``/etc/resolv.conf`` are the network manager's
  (``agent/network/hostfiles.py``), bound read-only.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from ..errors import Failed, InvalidArgument
from .image import ImageConfig
from .itemconfig import ItemConfig
from .resources import ResourceGrant

if TYPE_CHECKING:
    from aos_sm.hw import NodeCapacity

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_TERM = "TERM=xterm"
DEFAULT_NO_FILE_LIMIT = 1024
DEFAULT_TMP_SIZE = 64 * 1024 * 1024
CPU_PERIOD_US = 100000  # reference cDefaultCPUPeriod
MIN_CPU_QUOTA_US = 1000  # reference cMinCPUQuota
# runc spec's defaults for an unprivileged process.
_CAPABILITIES = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
_MASKED = ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
           "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"]
_READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


@dataclass(frozen=True)
class CpuCapacity:
    """The node figures the CPU quota formula needs (``hw.NodeCapacity``: max_dmips, its cores)."""

    max_dmips: int
    cores: int

    @classmethod
    def of_node(cls, node: NodeCapacity) -> CpuCapacity:
        # max_dmips sums the online cores (hw/cpu.py total_dmips): count the same ones.
        return cls(node.max_dmips, sum(1 for core in node.cpus if core.online))


def aos_instance_id(item_id: str, subject_id: str, instance: int) -> str:
    """The instance id of INSTANCES.md: a name-based UUID v3 (MD5, OID namespace, as Poco's
    ``createFromName``) of ``"<itemID>:<subjectID>:<instance>"``."""
    return str(uuid.uuid3(uuid.NAMESPACE_OID, f"{item_id}:{subject_id}:{instance}"))


def cpu_quota_us(limit_dmips: int, cpu: CpuCapacity) -> int:
    """The CFS quota per ``CPU_PERIOD_US`` that buys ``limit_dmips`` on this node."""
    if cpu.max_dmips <= 0:
        raise Failed("item config quotas.cpuDMIPSLimit: the node's max DMIPS is unknown (set maxDMIPS)")
    return max(limit_dmips * CPU_PERIOD_US * max(cpu.cores, 1) // cpu.max_dmips, MIN_CPU_QUOTA_US)


@dataclass(frozen=True)
class BundleSpec:
    """What an instance's bundle needs besides the image config."""

    rootfs: str
    hostname: str
    cgroups_path: str  # absolute from each hierarchy's root: "/<cgroupParent>/<container id>"
    uid: int
    gid: int
    env_vars: Tuple[Tuple[str, str], ...] = ()
    priority: int = 0
    storage_path: str = ""
    state_path: str = ""
    item_id: str = ""
    subject_id: str = ""
    instance_index: int = 0
    item_config: ItemConfig = ItemConfig()
    resources: ResourceGrant = ResourceGrant()
    cpu: Optional[CpuCapacity] = None  # needed only when the item config has cpuDMIPSLimit
    host_binds: Tuple[str, ...] = ()  # host paths bound read-only at the same place
    netns: str = ""  # the network namespace to join (the network manager's); empty: the agent's


def _aos_environment(spec: BundleSpec) -> List[str]:
    return [
        f"AOS_ITEM_ID={spec.item_id}",
        f"AOS_SUBJECT_ID={spec.subject_id}",
        f"AOS_INSTANCE_INDEX={spec.instance_index}",
        f"AOS_INSTANCE_ID={aos_instance_id(spec.item_id, spec.subject_id, spec.instance_index)}",
    ]


def _environment(spec: BundleSpec, image_env: Sequence[str]) -> List[str]:
    merged: Dict[str, str] = {}
    for entry in (DEFAULT_PATH, DEFAULT_TERM, *_aos_environment(spec), *image_env, *spec.resources.envs):
        name, _, value = entry.partition("=")
        merged[name] = value
    for name, value in spec.env_vars:
        if not name or "=" in name or "\0" in name:
            raise InvalidArgument(f"env var name {name!r} is not valid")
        merged[name] = value
    return [f"{name}={value}" for name, value in merged.items()]


def _bind(source: str, destination: str, read_only: bool = False) -> Dict[str, Any]:
    options = ["rbind", "nosuid", "nodev"] + (["ro"] if read_only else ["rw"])
    return {"destination": destination, "type": "bind", "source": source, "options": options}


def _resource_mount(destination: str, kind: str, source: str, options: Sequence[str]) -> Dict[str, Any]:
    # resources.cfg often names a bind without a type (Docker style): runc needs one.
    kind = kind or "bind"
    listed = list(options)
    if kind == "bind" and not {"bind", "rbind"} & set(listed):
        listed.insert(0, "rbind")
    return {"destination": destination, "type": kind, "source": source, "options": listed}


def _tmp_size(spec: BundleSpec) -> int:
    limit = spec.item_config.quotas.tmp_limit
    return limit if limit is not None else DEFAULT_TMP_SIZE


def _mounts(spec: BundleSpec) -> List[Dict[str, Any]]:
    mounts: List[Dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "nodev", "mode=1777", f"size={_tmp_size(spec)}"]},
    ]
    added = [_bind(path, path, read_only=True) for path in spec.host_binds]
    added += [_resource_mount(m.destination, m.type, m.source, m.options) for m in spec.resources.mounts]
    if spec.storage_path:
        added.append(_bind(spec.storage_path, "/storage"))
    if spec.state_path:
        added.append(_bind(spec.state_path, "/state.dat"))
    for mount in added:
        # A same destination replaces the earlier mount (reference AddMount), keeping its place.
        for position, existing in enumerate(mounts):
            if existing["destination"] == mount["destination"]:
                mounts[position] = mount
                break
        else:
            mounts.append(mount)
    return mounts


def _rlimits(spec: BundleSpec) -> List[Dict[str, Any]]:
    quotas = spec.item_config.quotas
    no_file = quotas.no_file_limit if quotas.no_file_limit is not None else DEFAULT_NO_FILE_LIMIT
    limits = [{"type": "RLIMIT_NOFILE", "hard": no_file, "soft": no_file}]
    if quotas.pids_limit is not None:
        limits.append({"type": "RLIMIT_NPROC", "hard": quotas.pids_limit, "soft": quotas.pids_limit})
    return limits


def _resources(spec: BundleSpec) -> Dict[str, Any]:
    """``linux.resources``: the device cgroup (deny all, then each granted device) and quotas."""
    devices: List[Dict[str, Any]] = [{"allow": False, "access": "rwm"}]
    devices.extend({"allow": True, "type": d.kind, "major": d.major, "minor": d.minor, "access": d.access}
                   for d in spec.resources.devices)
    resources: Dict[str, Any] = {"devices": devices}
    quotas = spec.item_config.quotas
    if quotas.cpu_dmips_limit is not None:
        if spec.cpu is None:
            raise Failed("item config quotas.cpuDMIPSLimit: the node's CPU capacity is unknown")
        resources["cpu"] = {"quota": cpu_quota_us(quotas.cpu_dmips_limit, spec.cpu), "period": CPU_PERIOD_US}
    if quotas.ram_limit is not None:
        resources["memory"] = {"limit": quotas.ram_limit}
    if quotas.pids_limit is not None:
        resources["pids"] = {"limit": quotas.pids_limit}
    return resources


def _linux(spec: BundleSpec) -> Dict[str, Any]:
    linux: Dict[str, Any] = {
        "cgroupsPath": spec.cgroups_path,
        "resources": _resources(spec),
        "namespaces": [{"type": kind} for kind in ("pid", "ipc", "uts", "mount")]
        + ([{"type": "network", "path": spec.netns}] if spec.netns else []),
        "maskedPaths": list(_MASKED),
        "readonlyPaths": list(_READONLY),
    }
    if spec.resources.devices:
        linux["devices"] = [{"path": d.path, "type": d.kind, "major": d.major, "minor": d.minor,
                             "fileMode": d.file_mode, "uid": d.uid, "gid": d.gid} for d in spec.resources.devices]
    if spec.item_config.sysctl:
        linux["sysctl"] = dict(spec.item_config.sysctl)
    return linux


def build_runtime_spec(image: ImageConfig, spec: BundleSpec) -> Dict[str, Any]:
    """The OCI runtime spec 1.0 ``config.json`` of one instance."""
    args = list(image.entrypoint) + list(image.cmd)
    if not args:
        raise InvalidArgument("the image config has neither Entrypoint nor Cmd: nothing to run")
    capabilities = list(_CAPABILITIES)
    oom_score_adj: Optional[int] = -min(spec.priority, 999) if spec.priority else None
    user: Dict[str, Any] = {"uid": spec.uid, "gid": spec.gid}
    if spec.resources.additional_gids:
        user["additionalGids"] = list(spec.resources.additional_gids)
    process: Dict[str, Any] = {
        "terminal": False,
        "user": user,
        "args": args,
        "env": _environment(spec, image.env),
        "cwd": image.working_dir if image.working_dir.startswith("/") else "/" + image.working_dir,
        "capabilities": {key: capabilities for key in ("bounding", "effective", "permitted")},
        "rlimits": _rlimits(spec),
        "noNewPrivileges": True,
    }
    if oom_score_adj is not None:
        process["oomScoreAdj"] = oom_score_adj
    return {
        "ociVersion": "1.0.2",
        "process": process,
        "root": {"path": spec.rootfs, "readonly": True},
        "hostname": spec.item_config.hostname or spec.hostname,
        "mounts": _mounts(spec),
        "linux": _linux(spec),
    }

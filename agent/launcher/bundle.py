"""The OCI runtime spec (``config.json``) of an instance, from its image config and InstanceInfo.

Pure: no I/O. Choices, each for a reason:
- The rootfs is the image's shared, unpacked rootfs mounted read-only: instances of one image
  must not change each other's files. ``/tmp`` is a private tmpfs for scratch files.
- ``storage_path`` is bound read-write at ``/storage`` and ``state_path`` at ``/state.dat``
  (a file) or ``/state`` (a directory), where the reference SM puts them.
- The process runs as InstanceInfo's uid/gid (CM allocates them per instance), not the image's
  ``User``; ``noNewPrivileges`` and runc's default unprivileged capability set.
- Environment: ``PATH`` default, then the image's ``Env``, then InstanceInfo ``env_vars`` (last wins).
- ``priority`` (higher = more important) lowers ``oomScoreAdj`` so the kernel kills low-priority
  instances first under memory pressure: ``-min(priority, 999)``; never -1000, which would make
  an instance unkillable.
- The container joins new pid, ipc, uts and mount namespaces; networking is the host's until the
  network manager provides namespaces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..errors import InvalidArgument
from .image import ImageConfig

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# runc spec's defaults for an unprivileged process.
_CAPABILITIES = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
_MASKED = ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
           "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"]
_READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


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
    state_is_file: bool = True


def _environment(image_env: Sequence[str], env_vars: Sequence[Tuple[str, str]]) -> List[str]:
    merged: Dict[str, str] = {}
    for entry in (DEFAULT_PATH, *image_env):
        name, _, value = entry.partition("=")
        merged[name] = value
    for name, value in env_vars:
        if not name or "=" in name or "\0" in name:
            raise InvalidArgument(f"env var name {name!r} is not valid")
        merged[name] = value
    return [f"{name}={value}" for name, value in merged.items()]


def _bind(source: str, destination: str, read_only: bool = False) -> Dict[str, Any]:
    options = ["rbind", "nosuid", "nodev"] + (["ro"] if read_only else ["rw"])
    return {"destination": destination, "type": "bind", "source": source, "options": options}


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
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]},
    ]
    if spec.storage_path:
        mounts.append(_bind(spec.storage_path, "/storage"))
    if spec.state_path:
        mounts.append(_bind(spec.state_path, "/state.dat" if spec.state_is_file else "/state"))
    return mounts


def build_runtime_spec(image: ImageConfig, spec: BundleSpec) -> Dict[str, Any]:
    """The OCI runtime spec 1.0 ``config.json`` of one instance."""
    args = list(image.entrypoint) + list(image.cmd)
    if not args:
        raise InvalidArgument("the image config has neither Entrypoint nor Cmd: nothing to run")
    capabilities = list(_CAPABILITIES)
    oom_score_adj: Optional[int] = -min(spec.priority, 999) if spec.priority else None
    process: Dict[str, Any] = {
        "terminal": False,
        "user": {"uid": spec.uid, "gid": spec.gid},
        "args": args,
        "env": _environment(image.env, spec.env_vars),
        "cwd": image.working_dir if image.working_dir.startswith("/") else "/" + image.working_dir,
        "capabilities": {key: capabilities for key in ("bounding", "effective", "permitted")},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": True,
    }
    if oom_score_adj is not None:
        process["oomScoreAdj"] = oom_score_adj
    return {
        "ociVersion": "1.0.2",
        "process": process,
        "root": {"path": spec.rootfs, "readonly": True},
        "hostname": spec.hostname,
        "mounts": _mounts(spec),
        "linux": {
            "cgroupsPath": spec.cgroups_path,
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": kind} for kind in ("pid", "ipc", "uts", "mount")],
            "maskedPaths": list(_MASKED),
            "readonlyPaths": list(_READONLY),
        },
    }

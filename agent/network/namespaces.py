"""Named network namespaces (``/run/netns/<name>``, as `ip netns` makes them), without a process.

A namespace is created by the calling thread: it unshares its own network namespace (unshare(2)
acts on the calling thread), bind-mounts ``/proc/thread-self/ns/net`` onto the name, and steps
back into the namespace it came from with setns(2). The bind mount keeps the namespace alive; a
runc spec's ``{"type": "network", "path": ...}`` joins it. Like `ip netns`, the directory is made
a shared mount first, so that unmounting a name also releases copies that mount namespaces made
later hold (the leaked-netns reports of cri-o 273 and moby 15857).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from pathlib import Path
from typing import List

from ..errors import RuntimeFailure
from .rtnl import CLONE_NEWNET, setns, thread_netns

NETNS_DIR = Path("/run/netns")
MS_BIND, MS_REC, MS_SHARED = 0x1000, 0x4000, 1 << 20
MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise RuntimeFailure(f"{what}: {os.strerror(code)}", exit_code=code)


def _mount(source: str, target: Path, flags: int) -> None:
    _check(_libc.mount(source.encode(), str(target).encode(), None, flags, None), f"mount {target}")


def _is_mount_point(path: Path) -> bool:
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as mounts:
        return any(line.split()[4] == str(path) for line in mounts if len(line.split()) > 4)


class Namespaces:
    """Create, list and delete the named network namespaces under ``directory``."""

    def __init__(self, directory: Path = NETNS_DIR) -> None:
        self.directory = directory
        self._prepared = False

    def path(self, name: str) -> Path:
        return self.directory / name

    def _prepare(self) -> None:
        if self._prepared:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        if not _is_mount_point(self.directory):
            _mount(str(self.directory), self.directory, MS_BIND | MS_REC)
        _mount("none", self.directory, MS_SHARED | MS_REC)
        self._prepared = True

    def create(self, name: str) -> Path:
        """A new, empty namespace (loopback down) at ``<directory>/<name>``; EEXIST if taken."""
        self._prepare()
        path = self.path(name)
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
        os.close(fd)
        home = thread_netns()
        try:
            try:
                _check(_libc.unshare(CLONE_NEWNET), "unshare")
                try:
                    _mount("/proc/thread-self/ns/net", path, MS_BIND)
                finally:
                    setns(home)
            except BaseException:
                with contextlib.suppress(OSError):
                    path.unlink()
                raise
        finally:
            os.close(home)
        return path

    def delete(self, name: str) -> bool:
        """Unmount and remove; False when it was not there."""
        path = self.path(name)
        if not path.exists():
            return False
        if _libc.umount2(str(path).encode(), MNT_DETACH) != 0:
            code = ctypes.get_errno()
            if code not in (22,):  # EINVAL: not a mount point (a half-made one): just remove the file
                raise RuntimeFailure(f"umount {path}: {os.strerror(code)}", exit_code=code)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return True

    def names(self) -> List[str]:
        try:
            return sorted(entry.name for entry in self.directory.iterdir())
        except FileNotFoundError:
            return []

"""The adapter that carries out a root filesystem plan (``rootfs.py``): probes, layer files, mounts.

Each instance's root lives in ``<rootfs>/<container id>/``: ``top`` (its top layer), ``host`` (its
host layer) and ``mnt`` (the overlay runc gets as ``root.path``). Nothing is ever mounted on
``top`` or ``host``, so removing them can never reach into a mount; ``mnt`` is only ``rmdir``-ed.
``<rootfs>`` itself is a small tmpfs (``ensure_tmpfs``): those layers are rebuilt at every start,
a reboot should forget them, and on ext4 the dozen ``mkdir`` calls of a start cost about 3 ms
(journalled, and flash writes on a board) against microseconds in memory.

Why mount(2) through ctypes, not the ``mount`` binary: a start mounts two or more overlays, and a
fork and exec of ``mount`` costs milliseconds each against a 25 ms ``runc run -d``; the syscall
also gives the errno itself instead of a message to parse.

Why lower layers are named ``/proc/self/fd/<n>``: the mount options are cut at a page (4096 bytes,
``copy_mount_options``), which twenty layers under a long working dir exceed. Relative paths
would need ``chdir``, which is process-wide and so unsafe with parallel starts; a descriptor per
layer keeps every name at about 17 bytes (some 200 layers fit; overlayfs stops at 500) and is
thread-safe. The descriptors are closed once the mount is made: the overlay holds the layers.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import logging
import os
import shutil
import stat
from pathlib import Path
from typing import Dict, Iterator, List, Sequence

from ..errors import Failed
from .rootfs import Entry, HostEntry, NestedMount, RootfsPlan

log = logging.getLogger(__name__)

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_REMOUNT = 32
MS_BIND = 4096
MNT_DETACH = 2
_OPAQUE_XATTR = "trusted.overlay.opaque"



@functools.lru_cache(maxsize=None)
def _libc() -> ctypes.CDLL:
    # The C library already loaded into this process (glibc or musl alike).
    return ctypes.CDLL(None, use_errno=True)


class RootfsError(Failed):
    """The instance's root filesystem could not be built or removed."""


def _mount(source: str, target: str, fstype: str, flags: int, data: str = "") -> None:
    result = _libc().mount(source.encode(), target.encode(), fstype.encode(), ctypes.c_ulong(flags),
                         data.encode() if data else None)
    if result != 0:
        code = ctypes.get_errno()
        if code == errno.ELOOP and fstype == "overlay":
            # What the kernel says (dmesg: "overlapping lowerdir path") when one layer is inside another.
            raise RootfsError(f"overlayfs refused overlapping layers: is the working dir under a kept host "
                              f"directory? ({target})")
        raise RootfsError(f"mount {fstype or 'bind'} failed: {os.strerror(code)} ({target})")


def _detach(target: str) -> bool:
    """Detach the mount at ``target`` with everything under it; False when nothing is mounted there."""
    if _libc().umount2(target.encode(), MNT_DETACH) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOENT):
        return False
    raise RootfsError(f"umount failed: {os.strerror(code)} ({target})")


# --- probes --------------------------------------------------------------------------------------


def probe_layer(layer: Path, names: Sequence[str]) -> Dict[str, Entry]:
    """What ``layer`` has at each of ``names`` (top level), as overlayfs will read it."""
    found: Dict[str, Entry] = {}
    for name in names:
        path = layer / name
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue
        except OSError as err:
            raise RootfsError(f"cannot read image layer: {err}") from err
        if stat.S_ISDIR(info.st_mode):
            try:
                opaque = os.getxattr(path, _OPAQUE_XATTR, follow_symlinks=False) == b"y"
            except OSError:
                opaque = False
            found[name] = Entry.OPAQUE_DIR if opaque else Entry.DIR
        elif stat.S_ISCHR(info.st_mode) and info.st_rdev == 0:
            found[name] = Entry.WHITEOUT
        else:
            found[name] = Entry.OTHER
    return found


def probe_host(root: Path, names: Sequence[str]) -> List[HostEntry]:
    """The kept top-level entries the host has (a name it lacks is left out)."""
    entries: List[HostEntry] = []
    for name in names:
        path = root / name
        try:
            info = path.lstat()
        except OSError:
            continue
        if stat.S_ISLNK(info.st_mode):
            entries.append(HostEntry(name, "symlink", os.readlink(path)))
        elif stat.S_ISDIR(info.st_mode):
            entries.append(HostEntry(name, "dir", mode=stat.S_IMODE(info.st_mode)))
        elif stat.S_ISREG(info.st_mode):
            entries.append(HostEntry(name, "file", mode=stat.S_IMODE(info.st_mode)))
    return entries


# --- building and removing -------------------------------------------------------------------------


@contextlib.contextmanager
def _layer_options(lowers: Sequence[str]) -> Iterator[str]:
    descriptors: List[int] = []
    try:
        for lower in lowers:
            descriptors.append(os.open(lower, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
        yield "lowerdir=" + ":".join(f"/proc/self/fd/{fd}" for fd in descriptors)
    except OSError as err:
        raise RootfsError(f"cannot open layer: {err}") from err
    finally:
        for fd in descriptors:
            os.close(fd)


def _write_layers(top: Path, host: Path, plan: RootfsPlan) -> None:
    top.mkdir(mode=0o755)
    for stub in plan.top:
        path = top / stub.path
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        if stub.is_file:
            path.write_bytes(stub.content)
            path.chmod(0o644)
        else:
            path.mkdir(mode=0o755, exist_ok=True)
    host.mkdir(mode=0o755)
    for entry in plan.host:
        path = host / entry.name
        if entry.kind == "symlink":
            os.symlink(entry.target, path)
        elif entry.kind == "dir":
            path.mkdir()
            path.chmod(entry.mode)
        else:
            path.touch(mode=0o644)


def _mount_nested(mnt: Path, nested: NestedMount) -> None:
    target = str(mnt / nested.name)
    if len(nested.lowers) == 1:
        _mount(nested.lowers[0], target, "", MS_BIND)
        _mount("", target, "", MS_BIND | MS_REMOUNT | MS_RDONLY)
        return
    with _layer_options(nested.lowers) as options:
        _mount("overlay", target, "overlay", MS_RDONLY, options)


def mount_rootfs(directory: Path, plan: RootfsPlan) -> Path:
    """Write the plan's layers in ``directory`` (made by the plan's own paths: ``top`` and
    ``host``) and mount the overlays at ``directory/mnt``; that path. On failure nothing stays."""
    remove_rootfs(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _write_layers(directory / "top", directory / "host", plan)
        mnt = directory / "mnt"
        mnt.mkdir()
        with _layer_options(plan.lowers) as options:
            _mount("overlay", str(mnt), "overlay", MS_RDONLY, options)
        for nested in plan.nested:
            _mount_nested(mnt, nested)
    except BaseException as failure:
        with contextlib.suppress(RootfsError):
            remove_rootfs(directory)
        if isinstance(failure, OSError):
            raise RootfsError(f"cannot write rootfs layers: {failure}") from failure
        raise
    return mnt


def ensure_tmpfs(path: Path, size: str = "32m") -> None:
    """A tmpfs at ``path`` unless one (or any mount) is there already (an agent restart keeps the
    roots of the instances it adopts)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        if os.path.ismount(path):
            return
    except OSError as err:
        raise RootfsError(f"cannot make the roots directory: {err}") from err
    _mount("aos-sm-rootfs", str(path), "tmpfs", MS_NOSUID | MS_NODEV, f"mode=0755,size={size}")


def release_tmpfs(path: Path) -> bool:
    """Unmount the roots' tmpfs at ``path`` if it is ours (``ensure_tmpfs``'s source name) and
    holds no instance's root; True when it was unmounted. What someone else mounted there stays."""
    try:
        ours = any(fields[4] == str(path) and line.split(" - ", 1)[1].split()[1] == "aos-sm-rootfs"
                   for line in Path("/proc/self/mountinfo").read_text().splitlines()
                   for fields in [line.split()] if " - " in line)
        if not ours or any(path.iterdir()):
            return False
    except OSError as err:
        raise RootfsError(f"cannot read the roots directory: {err}") from err
    return _detach(str(path))


def remove_rootfs(directory: Path) -> None:
    """Unmount an instance's root and remove its layers; nothing there is fine."""
    mnt = directory / "mnt"
    for _ in range(16):  # a leftover may have been mounted more than once
        if not _detach(str(mnt)):
            break
    try:
        for layer in ("top", "host"):
            if (directory / layer).exists() or (directory / layer).is_symlink():
                shutil.rmtree(directory / layer)
        with contextlib.suppress(FileNotFoundError):
            mnt.rmdir()  # never rmtree: if something were still mounted there, rmdir fails (EBUSY)
        with contextlib.suppress(FileNotFoundError):
            directory.rmdir()
    except OSError as err:
        raise RootfsError(f"cannot remove rootfs: {err}") from err

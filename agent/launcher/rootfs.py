"""An instance's root filesystem as a stack of read-only overlay layers: the plan (pure, no I/O).

What the container sees (INSTANCES.md "The runtime spec"), top first:
1. a small per-instance layer: a stub for every mount point the runtime spec needs (runc cannot
   create one in a read-only root), and the instance's ``etc/hosts`` and ``etc/resolv.conf``;
2. the image layers, the last OCI layer on top (the reference stacks multi-layer images in
   reverse: not copied);
3. of the host, only the kept top-level entries (``rootfsHostDirs``, default ``bin sbin lib lib64
   usr``), so an image may hold only its own files and run on the host's interpreter and libraries.

How the host part is built, and why not as the reference does: the reference puts a layer of
whiteouts (hiding every other top-level host entry) over the host ``/`` itself. The kernel refuses
that whenever a layer sits on the same filesystem below ``/`` ("overlapping lowerdir path",
fs/overlayfs ``ovl_check_layer``): an image store on the root filesystem. Here the bottom layer is
a per-instance *host layer* holding only the kept entries: a symlink is copied (on merged-/usr
hosts ``bin`` is ``usr/bin``), a directory is an empty stub on which its own overlay is mounted
afterwards: that directory of every layer above, over the host's own directory (``/usr`` is not an
ancestor of any layer, so nothing overlaps). The container sees exactly what the reference's stack
shows, on any filesystem layout, and a top-level entry created on the host later never appears.

The per-directory stack follows overlayfs' own merge rules, read from each layer's top-level entry
(probed by the adapter): a whiteout hides the host's directory, a non-directory above ends the
merge, and an opaque directory hides what is below it (overlayfs ignores the opaque mark on a
layer's root, so the planner must apply it). A host directory that nothing covers is bound
read-only (overlayfs needs two lower layers without an upper one).
"""

from __future__ import annotations

import enum
import posixpath
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from ..errors import InvalidArgument

DEFAULT_HOST_DIRS = ("bin", "sbin", "lib", "lib64", "usr")
# Bound read-only from the host when they exist (reference container.cpp): certificates, and the
# name service switch the host's libc reads.
HOST_BINDS = ("/etc/ssl", "/etc/nsswitch.conf")


class Entry(enum.Enum):
    """What a layer has at one top-level name."""

    ABSENT = "absent"
    DIR = "dir"
    OPAQUE_DIR = "opaque dir"  # trusted.overlay.opaque=y: hides the layers below
    WHITEOUT = "whiteout"  # overlay whiteout (char device 0:0)
    OTHER = "other"  # a file, symlink, or anything that is not a directory


@dataclass(frozen=True)
class HostEntry:
    """A kept top-level entry of the host: ``kind`` is "dir", "file" or "symlink" (with its target)."""

    name: str
    kind: str
    target: str = ""
    mode: int = 0o755


@dataclass(frozen=True)
class EtcFiles:
    """The instance's ``/etc/hosts`` and ``/etc/resolv.conf``, written into its top layer."""

    hosts: str
    resolv_conf: str


def default_etc_files(hostname: str, host_resolv_conf: str) -> EtcFiles:
    """Until the network manager provides them: loopback names plus the hostname, and the host's
    resolvers (the instance shares the host's network)."""
    hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    if hostname:
        hosts += f"127.0.1.1\t{hostname}\n"
    return EtcFiles(hosts, host_resolv_conf)


@dataclass(frozen=True)
class MountPoint:
    """A mount of the runtime spec: its destination, and whether it mounts a file."""

    destination: str
    is_file: bool = False


@dataclass(frozen=True)
class Stub:
    """An entry of the top layer: a directory, or a file with ``content`` (empty for a stub)."""

    path: str  # relative to the layer
    is_file: bool
    content: bytes = b""


@dataclass(frozen=True)
class NestedMount:
    """A kept host directory (or file) mounted over its stub: an overlay of ``lowers`` (top first),
    or a read-only bind of the one lower."""

    name: str
    lowers: Tuple[str, ...]


@dataclass(frozen=True)
class RootfsPlan:
    top: Tuple[Stub, ...]  # the per-instance top layer
    host: Tuple[HostEntry, ...]  # the per-instance host layer
    lowers: Tuple[str, ...]  # the root overlay's lower layers, top first
    nested: Tuple[NestedMount, ...]  # mounted on the root overlay, in order


def _relative(destination: str) -> str:
    normal = posixpath.normpath("/" + destination).lstrip("/")
    if normal.startswith(".."):  # normpath of an absolute path never climbs: defensive only
        raise InvalidArgument(f"mount destination {destination!r} leaves the root")
    return normal


def plan_stubs(mounts: Sequence[MountPoint], etc: EtcFiles) -> Tuple[Stub, ...]:
    """The top layer: a stub per mount destination that no other mount contains (runc creates
    those inside the mount, ``/dev/pts`` in the ``/dev`` tmpfs), and the etc files."""
    destinations = {_relative(m.destination): m.is_file for m in mounts}
    destinations.pop("", None)
    stubs: Dict[str, Stub] = {}
    for path, is_file in destinations.items():
        parents = [path.rsplit("/", depth)[0] for depth in range(1, path.count("/") + 1)]
        if not any(parent in destinations for parent in parents):
            stubs[path] = Stub(path, is_file)
    stubs["etc/hosts"] = Stub("etc/hosts", True, etc.hosts.encode())
    stubs["etc/resolv.conf"] = Stub("etc/resolv.conf", True, etc.resolv_conf.encode())
    return tuple(sorted(stubs.values(), key=lambda stub: stub.path))


def _through_symlinks(stubs: Sequence[Stub], symlinks: Mapping[str, str]) -> Tuple[Stub, ...]:
    """Stubs below a host symlink the container sees (``lib/modules`` with ``lib -> usr/lib``) go
    where runc will mount, through the link (``usr/lib/modules``): a ``lib`` directory in the top
    layer would hide the host's link, and with it all of ``/usr/lib``."""
    moved: List[Stub] = []
    for stub in stubs:
        first, _, rest = stub.path.partition("/")
        if first in symlinks:
            target = _relative(symlinks[first])  # relative to the root: the link is at the top
            stub = Stub(posixpath.join(target, rest) if rest else target, stub.is_file, stub.content)
        moved.append(stub)
    return tuple(moved)


def _top_entry(stubs: Sequence[Stub], name: str) -> Entry:
    for stub in stubs:
        if stub.path == name:
            return Entry.OTHER if stub.is_file else Entry.DIR
        if stub.path.startswith(name + "/"):
            return Entry.DIR
    return Entry.ABSENT


def _nested(host: HostEntry, host_root: str, stack: Sequence[Tuple[str, Entry]]) -> Optional[NestedMount]:
    """The mount that puts host entry ``host`` under the layers above it, or None when the root
    overlay alone already shows the right thing (a symlink, or something above hides the host's)."""
    if host.kind == "symlink":
        return None
    dirs: List[str] = []
    for layer, entry in stack:
        if entry is Entry.ABSENT:
            continue
        if entry is Entry.WHITEOUT or entry is Entry.OTHER:
            return None  # hidden, or a non-directory above ends the merge (upper dirs need no mount)
        dirs.append(posixpath.join(layer, host.name))
        if entry is Entry.OPAQUE_DIR or host.kind != "dir":
            return None  # the host's entry is hidden by the opaque directory, or not mergeable
    return NestedMount(host.name, (*dirs, posixpath.join(host_root, host.name)))


def plan_rootfs(*, top: str, host_layer: str, image_layers: Sequence[str],
                probes: Sequence[Mapping[str, Entry]], host: Sequence[HostEntry], host_root: str,
                mounts: Sequence[MountPoint], etc: EtcFiles) -> RootfsPlan:
    """The plan of one instance's root filesystem.

    ``image_layers`` are bottom first (OCI order); ``probes[i]`` says what ``image_layers[i]`` has
    at each kept name (missing names: absent); ``host`` are the kept entries the host has."""
    if len(probes) != len(image_layers):
        raise ValueError("one probe per image layer")
    layers_top_first = list(zip(reversed(image_layers), reversed(probes)))
    shown_symlinks = {entry.name: entry.target for entry in host if entry.kind == "symlink" and all(
        probe.get(entry.name, Entry.ABSENT) is Entry.ABSENT for probe in probes)}
    stubs = _through_symlinks(plan_stubs(mounts, etc), shown_symlinks)
    nested: List[NestedMount] = []
    for entry in host:
        stack = [(top, _top_entry(stubs, entry.name))]
        stack += [(layer, probe.get(entry.name, Entry.ABSENT)) for layer, probe in layers_top_first]
        mount = _nested(entry, host_root, stack)
        if mount is not None:
            nested.append(mount)
    lowers = (top, *(layer for layer, _ in layers_top_first), host_layer)
    return RootfsPlan(stubs, tuple(host), lowers, tuple(nested))

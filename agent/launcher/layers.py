"""One OCI layer unpacked into its own directory, in the form overlayfs takes as a lower dir.

Layers (OCI image-spec ``layer.md``): tar, optionally gzip-compressed (the media types in
:data:`LAYER_TYPES`; anything else is refused). Each layer is unpacked alone, never on top of the
layers below it, so that one unpacked layer serves every image that has it and the container's
root filesystem is an overlay of them (``lowerdir`` = the layers top first). The OCI deletion
markers therefore become overlayfs's own (``Documentation/filesystems/overlayfs.rst``):

- ``.wh.<name>`` becomes a character device 0:0 called ``<name>`` (a whiteout);
- ``.wh..wh..opq`` becomes the xattr ``trusted.overlay.opaque=y`` on its directory.

Both need root (``CAP_MKNOD``, ``CAP_SYS_ADMIN`` for ``trusted.*``), as mounting overlays does.

The uncompressed tar must hash to the layer's diff id (checked while unpacking). A member whose
name (or hard link target) climbs out with ``..`` is refused; symlinks the layer itself plants are
followed inside the layer's directory only (runc's securejoin rule), so nothing is written outside
it. Device nodes and FIFOs from the tar are skipped: the runtime provides ``/dev``.

:func:`tree_digest` hashes an unpacked tree (names, types, modes, owners, contents, link targets,
whiteouts and the opaque xattr; not times). The image store records it when a layer is installed
and the periodic sweep recomputes it, since the packed blob is deleted once unpacked.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import shutil
import stat
import struct
import tarfile
import zlib
from pathlib import Path, PurePosixPath
from typing import IO, List

from ..errors import InvalidArgument, InvalidChecksum

# OCI image-spec media-types.md and Docker's distribution manifest v2 (image-spec's compatibility
# matrix); "nondistributable" layers are the same formats.
LAYER_TYPES = frozenset({
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
})
OPAQUE_XATTR = "trusted.overlay.opaque"
_GZIP_MAGIC = b"\x1f\x8b"
_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"
_MAX_SYMLINKS = 40  # as the kernel's path walk (path_resolution(7))
_CHUNK = 1 << 16


def check_layer_type(media_type: str, index: int) -> None:
    """Refuse a layer we cannot unpack (zstd, an encrypted layer, a typo) before downloading it."""
    if media_type not in LAYER_TYPES:
        raise InvalidArgument(f"unsupported layer media type {media_type!r} (layer {index})")


def unpacked_size_estimate(blob: Path) -> int:
    """Bytes the unpacked layer will take, about: the tar's size (a gzip's ISIZE trailer, modulo
    4 GiB as RFC 1952 keeps it), plus 1/16 for blocks and inodes small files waste."""
    size = blob.stat().st_size
    with open(blob, "rb") as raw:
        if raw.read(2) == _GZIP_MAGIC and size >= 18:
            raw.seek(-4, os.SEEK_END)
            (isize,) = struct.unpack("<I", raw.read(4))
            size = max(isize, size)
    return size + size // 16 + _CHUNK


class _HashingReader:
    """A file object that hashes what is read through it (the layer's diff id)."""

    def __init__(self, source: IO[bytes]) -> None:
        self._source = source
        self.hasher = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self.hasher.update(data)
        return data

    def drain(self) -> None:
        for _ in iter(lambda: self.read(_CHUNK), b""):
            pass


def _member_parts(name: str) -> List[str]:
    """The components of a tar member name; refuses names that climb out with ``..``."""
    parts = [p for p in PurePosixPath(name).parts if p not in ("/", ".")]
    if not parts or ".." in parts:
        raise InvalidArgument(f"layer entry leaves the rootfs: {name!r}")
    return parts


def _resolve_directory(top: Path, parts: List[str]) -> Path:
    """The directory ``parts`` names inside ``top``, following the layer's own symlinks as the
    container would: an absolute link is relative to ``top`` and ``..`` stops there. Missing
    directories are created."""
    resolved: List[str] = []
    pending = list(parts)
    links = 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = top.joinpath(*resolved, part)
        if candidate.is_symlink():
            links += 1
            if links > _MAX_SYMLINKS:
                raise InvalidArgument(f"too many symlinks in layer path {'/'.join(parts)}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            pending = [p for p in target.split("/") if p] + pending
            continue
        if not candidate.exists():
            candidate.mkdir(mode=0o755)
        elif not candidate.is_dir():
            raise InvalidArgument(f"not a directory in layer path {'/'.join(parts)}: {part}")
        resolved.append(part)
    return top.joinpath(*resolved)


def _member_path(top: Path, name: str) -> Path:
    parts = _member_parts(name)
    return _resolve_directory(top, parts[:-1]) / parts[-1]


def remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _extract_member(archive: tarfile.TarFile, member: tarfile.TarInfo, top: Path, target: Path) -> None:
    if target.exists() or target.is_symlink():
        if not (member.isdir() and target.is_dir() and not target.is_symlink()):
            remove_tree(target)
    if member.isdir():
        target.mkdir(exist_ok=True)
    elif member.isreg():
        source = archive.extractfile(member)
        assert source is not None
        with source, open(target, "xb") as out:
            shutil.copyfileobj(source, out, _CHUNK)
    elif member.issym():
        os.symlink(member.linkname, target)
    elif member.islnk():
        link_source = _member_path(top, member.linkname)
        if not link_source.is_symlink() and not link_source.is_file():
            raise InvalidArgument(f"hard link target missing in layer: {member.name} -> {member.linkname}")
        os.link(link_source, target, follow_symlinks=False)
        return
    else:
        return
    os.lchown(target, member.uid, member.gid)
    if not member.issym():
        os.chmod(target, stat.S_IMODE(member.mode))


def _whiteout(target: Path) -> None:
    """An overlay whiteout for ``target``'s name: a 0:0 character device."""
    if target.exists() or target.is_symlink():
        remove_tree(target)
    os.mknod(target, stat.S_IFCHR | 0o000, os.makedev(0, 0))


def unpack_layer(blob: Path, target: Path, diff_id: str) -> None:
    """Unpack one layer blob into the empty directory ``target`` in overlay form; raises
    InvalidChecksum when its diff id is wrong, InvalidArgument when it is not a usable tar."""
    with open(blob, "rb") as raw:
        compressed = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        stream: IO[bytes] = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw  # type: ignore[assignment]
        reader = _HashingReader(stream)
        try:
            with tarfile.open(fileobj=reader, mode="r|") as archive:  # type: ignore[call-overload]
                for member in archive:
                    path = _member_path(target, member.name)
                    if path.name == _OPAQUE:
                        os.setxattr(path.parent, OPAQUE_XATTR, b"y")
                    elif path.name.startswith(_WHITEOUT):
                        _whiteout(path.with_name(path.name[len(_WHITEOUT):]))
                    else:
                        _extract_member(archive, member, target, path)
            reader.drain()
        except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as err:
            raise InvalidArgument(f"not a valid tar archive: {err} (layer {blob.name})") from err
    actual = f"sha256:{reader.hasher.hexdigest()}"
    if actual != diff_id:
        raise InvalidChecksum(f"diff id mismatch: layer {blob.name} unpacks to {actual}, config says {diff_id}")


def tree_digest(top: Path) -> str:
    """A digest of an unpacked tree: every entry's path, type, mode, owner and content (regular
    files), target (symlinks), device (whiteouts) and opaque xattr (directories), in name order.
    Hard links hash as the files they are; times are left out (nothing sets them)."""
    hasher = hashlib.sha256()

    def visit(directory: Path, relative: str) -> None:
        for name in sorted(os.listdir(directory)):
            path = directory / name
            info = os.lstat(path)
            hasher.update(f"{relative}{name}\0{info.st_mode:o}\0{info.st_uid}\0{info.st_gid}\0".encode())
            if stat.S_ISREG(info.st_mode):
                with open(path, "rb") as source:
                    for chunk in iter(lambda: source.read(_CHUNK), b""):
                        hasher.update(chunk)
            elif stat.S_ISLNK(info.st_mode):
                hasher.update(os.readlink(path).encode())
            elif stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode):
                hasher.update(f"{os.major(info.st_rdev)}:{os.minor(info.st_rdev)}".encode())
            elif stat.S_ISDIR(info.st_mode):
                with contextlib.suppress(OSError):
                    hasher.update(b"opaque=" + os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False))
                hasher.update(b"\0")
                visit(path, f"{relative}{name}/")
            hasher.update(b"\0")

    visit(top, "")
    return f"sha256:{hasher.hexdigest()}"


def tree_bytes(top: Path) -> int:
    """Bytes the tree takes on its filesystem (allocated blocks; hard links once)."""
    seen = set()
    total = os.lstat(top).st_blocks * 512
    for directory, dirs, files in os.walk(top):
        for name in dirs + files:
            info = os.lstat(os.path.join(directory, name))
            if info.st_nlink > 1 and not stat.S_ISDIR(info.st_mode):
                if (info.st_dev, info.st_ino) in seen:
                    continue
                seen.add((info.st_dev, info.st_ino))
            total += info.st_blocks * 512
    return total

"""OCI images: manifest and config parsing, and layers unpacked into a shared rootfs.

An image is unpacked once per manifest digest into ``<images>/<hex>/rootfs`` and shared by every
instance of it (bundles mount it read-only). Unpacking happens in ``rootfs.partial`` and the
directory is renamed into place only when every layer is in and verified, so a crash mid-unpack
leaves nothing an instance could start from.

Layers (OCI image-spec ``layer.md``): tar, optionally gzip-compressed; ``.wh.<name>`` deletes
``<name>`` from the layers below, ``.wh..wh..opq`` empties its directory of what the layers below
put there. The uncompressed tar of layer *i* must hash to ``config.rootfs.diff_ids[i]``. A member
whose name (or hard link target) climbs out with ``..`` is refused and the whole image fails;
symlinks met on the way are followed inside the rootfs only, as the container will see them.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import stat
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, Callable, Dict, List, Optional, Set, Tuple

from ..errors import InvalidArgument, InvalidChecksum
from .blobs import BlobStore, digest_hex
from .itemconfig import ItemConfig, parse_item_config

MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v2+json")
_GZIP_MAGIC = b"\x1f\x8b"
_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: Optional[int]


@dataclass(frozen=True)
class Manifest:
    config: Descriptor
    layers: Tuple[Descriptor, ...]
    item_config: Optional[Descriptor]  # Aos's item config descriptor, when the manifest has one


@dataclass(frozen=True)
class ImageConfig:
    entrypoint: Tuple[str, ...]
    cmd: Tuple[str, ...]
    env: Tuple[str, ...]
    working_dir: str
    diff_ids: Tuple[str, ...]


def _load_json(data: bytes, what: str) -> Dict[str, Any]:
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise InvalidArgument(f"{what} is not valid JSON: {err}") from err
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} is not a JSON object")
    return value


def _descriptor(value: Any, what: str) -> Descriptor:
    if not isinstance(value, dict) or not isinstance(value.get("digest"), str):
        raise InvalidArgument(f"{what}: expected a descriptor with a digest")
    digest_hex(value["digest"])
    size = value.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise InvalidArgument(f"{what}: bad size {size!r}")
    return Descriptor(str(value.get("mediaType", "")), value["digest"], size)


def parse_manifest(data: bytes) -> Manifest:
    manifest = _load_json(data, "image manifest")
    media_type = manifest.get("mediaType")
    if media_type is not None and media_type not in MANIFEST_TYPES:
        raise InvalidArgument(f"image manifest: unsupported mediaType {media_type!r} (an index?)")
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise InvalidArgument("image manifest: no layers list")
    # The item config's key was renamed aosService -> aosItemConfig (aos_core_cpp 37b6fc3f);
    # older images still carry the first. When both are there the new name wins.
    item_key = next((key for key in ("aosItemConfig", "aosService") if manifest.get(key) is not None), None)
    return Manifest(
        config=_descriptor(manifest.get("config"), "image manifest config"),
        layers=tuple(_descriptor(layer, f"image manifest layer {i}") for i, layer in enumerate(layers)),
        item_config=_descriptor(manifest[item_key], f"image manifest {item_key}") if item_key else None,
    )


def _strings(value: Any, what: str) -> Tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"image config {what}: expected a list of strings")
    return tuple(value)


def parse_image_config(data: bytes) -> ImageConfig:
    document = _load_json(data, "image config")
    config = document.get("config") or {}
    rootfs = document.get("rootfs") or {}
    if not isinstance(config, dict) or not isinstance(rootfs, dict):
        raise InvalidArgument("image config: config and rootfs must be objects")
    working_dir = config.get("WorkingDir") or "/"
    if not isinstance(working_dir, str):
        raise InvalidArgument("image config WorkingDir: expected a string")
    return ImageConfig(
        entrypoint=_strings(config.get("Entrypoint"), "Entrypoint"),
        cmd=_strings(config.get("Cmd"), "Cmd"),
        env=_strings(config.get("Env"), "Env"),
        working_dir=working_dir,
        diff_ids=_strings(rootfs.get("diff_ids"), "rootfs.diff_ids"),
    )


# --- Unpacking -------------------------------------------------------------------------------------


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
        for _ in iter(lambda: self.read(1 << 16), b""):
            pass


_MAX_SYMLINKS = 40  # as the kernel's path walk (path_resolution(7))


def _member_parts(name: str) -> List[str]:
    """The components of a tar member name; refuses names that climb out with ``..``."""
    parts = [p for p in PurePosixPath(name).parts if p not in ("/", ".")]
    if not parts or ".." in parts:
        raise InvalidArgument(f"layer entry leaves the rootfs: {name!r}")
    return parts


def _resolve_directory(rootfs: Path, parts: List[str]) -> Path:
    """The directory ``parts`` names inside ``rootfs``, following symlinks as the container will
    see them: an absolute link is relative to the rootfs and ``..`` stops at its top, so nothing
    is ever written outside it whatever links earlier layers planted (the rule of runc's
    securejoin). Missing directories are created."""
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
        candidate = rootfs.joinpath(*resolved, part)
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
    return rootfs.joinpath(*resolved)


def _member_path(rootfs: Path, name: str) -> Path:
    """Where member ``name`` goes: its parent resolved inside the rootfs, then its own name."""
    parts = _member_parts(name)
    return _resolve_directory(rootfs, parts[:-1]) / parts[-1]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _extract_member(archive: tarfile.TarFile, member: tarfile.TarInfo, rootfs: Path, target: Path) -> None:
    if target.exists() or target.is_symlink():
        if not (member.isdir() and target.is_dir() and not target.is_symlink()):
            _remove(target)
    if member.isdir():
        target.mkdir(exist_ok=True)
    elif member.isreg():
        source = archive.extractfile(member)
        assert source is not None
        with source, open(target, "xb") as out:
            shutil.copyfileobj(source, out, 1 << 16)
    elif member.issym():
        os.symlink(member.linkname, target)
    elif member.islnk():
        link_source = _member_path(rootfs, member.linkname)
        if not link_source.is_symlink() and not link_source.is_file():
            raise InvalidArgument(f"hard link target missing in layer: {member.name} -> {member.linkname}")
        os.link(link_source, target, follow_symlinks=False)
        return
    else:
        # Device nodes and FIFOs: the runtime provides /dev; an image has no business creating them.
        return
    os.lchown(target, member.uid, member.gid)
    if not member.issym():
        os.chmod(target, stat.S_IMODE(member.mode))


def unpack_layer(path: Path, rootfs: Path, diff_id: str) -> None:
    """Apply one layer blob to ``rootfs``; raises InvalidChecksum when its diff id is wrong."""
    with open(path, "rb") as raw:
        compressed = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        stream: IO[bytes] = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw  # type: ignore[assignment]
        reader = _HashingReader(stream)
        created: Set[Path] = set()
        opaque: List[Path] = []
        try:
            with tarfile.open(fileobj=reader, mode="r|") as archive:  # type: ignore[call-overload]
                for member in archive:
                    target = _member_path(rootfs, member.name)
                    name = target.name
                    if name == _OPAQUE:
                        opaque.append(target.parent)
                        continue
                    if name.startswith(_WHITEOUT):
                        _remove(target.with_name(name[len(_WHITEOUT):]))
                        continue
                    _extract_member(archive, member, rootfs, target)
                    created.add(target)
            reader.drain()
        except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as err:
            raise InvalidArgument(f"not a valid tar archive: {err} (layer {path.name})") from err
    for directory in opaque:
        for entry in list(directory.iterdir()) if directory.is_dir() else []:
            if entry not in created:
                _remove(entry)
    actual = f"sha256:{reader.hasher.hexdigest()}"
    if actual != diff_id:
        raise InvalidChecksum(f"diff id mismatch: layer {path.name} unpacks to {actual}, config says {diff_id}")


@dataclass(frozen=True)
class Image:
    manifest_digest: str
    rootfs: Path
    config: ImageConfig
    blobs: Tuple[str, ...]  # every blob digest the image uses (manifest, config, layers, item config)
    item_config: ItemConfig = ItemConfig()  # the defaults when the manifest names none
    # Overlay lower directories, bottom first (OCI order); () means the one merged ``rootfs``.
    layers: Tuple[Path, ...] = ()


Resolver = Callable[[List[str]], List[str]]


class ImageStore:
    """Images by manifest digest: pulled through ``resolver`` (digests -> URLs, GetBlobsInfos)."""

    def __init__(self, root: Path, blobs: BlobStore) -> None:
        self.root = root
        self.blobs = blobs
        root.mkdir(parents=True, exist_ok=True)

    def directory(self, manifest_digest: str) -> Path:
        return self.root / digest_hex(manifest_digest)

    def installed(self) -> List[str]:
        return sorted(f"sha256:{d.name}" for d in self.root.iterdir() if (d / "rootfs").is_dir())

    def _fetch(self, resolver: Resolver, descriptors: List[Descriptor]) -> None:
        missing = [d for d in descriptors if not self.blobs.has(d.digest)]
        if not missing:
            return
        urls = resolver([d.digest for d in missing])
        for descriptor, url in zip(missing, urls):
            self.blobs.fetch(descriptor.digest, url, descriptor.size)

    def pull(self, manifest_digest: str, resolver: Resolver) -> Image:
        """The image, from the store or pulled, verified and unpacked now."""
        self._fetch(resolver, [Descriptor("", manifest_digest, None)])
        manifest = parse_manifest(self.blobs.path(manifest_digest).read_bytes())
        extras = [manifest.config] + ([manifest.item_config] if manifest.item_config else [])
        self._fetch(resolver, extras)
        config = parse_image_config(self.blobs.path(manifest.config.digest).read_bytes())
        item_config = ItemConfig()
        if manifest.item_config is not None:
            item_config = parse_item_config(self.blobs.path(manifest.item_config.digest).read_bytes())
        if len(config.diff_ids) != len(manifest.layers):
            raise InvalidArgument(
                f"image {manifest_digest}: {len(manifest.layers)} layers but {len(config.diff_ids)} diff ids"
            )
        blobs = (manifest_digest, *(d.digest for d in extras), *(d.digest for d in manifest.layers))
        directory = self.directory(manifest_digest)
        rootfs = directory / "rootfs"
        if not rootfs.is_dir():
            self._fetch(resolver, list(manifest.layers))
            partial = directory / "rootfs.partial"
            _remove(partial)
            partial.mkdir(parents=True)
            try:
                for layer, diff_id in zip(manifest.layers, config.diff_ids):
                    unpack_layer(self.blobs.path(layer.digest), partial, diff_id)
            except BaseException:
                _remove(partial)
                raise
            os.replace(partial, rootfs)
        return Image(manifest_digest, rootfs, config, blobs, item_config, layers=(rootfs,))

    def remove(self, manifest_digest: str) -> None:
        _remove(self.directory(manifest_digest))

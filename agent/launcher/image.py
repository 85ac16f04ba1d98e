"""OCI images: manifest and config parsing, and the image store.

Layout under the store's root (``<workingDir>/launcher/images``; blobs in ``../blobs``)::

    layers/<diff id hex>/          one unpacked layer, an overlayfs lower dir (``layers.py``)
    layers/<diff id hex>.json      its record: diff id, tree digest, bytes, when verified
    layers/<diff id hex>.partial/  a layer being unpacked (renamed into place once verified)
    images/<manifest hex>.json     an installed image: its item id, install time, layers

A layer is unpacked once per diff id and shared by every image that has it; its packed blob is
deleted once it is in place (INSTANCES.md "The image"). The manifest, config and item config
blobs stay in the blob store (the image is read back from them). An image counts as installed
once its record is written, after every layer is in, so a crash mid-pull leaves nothing an
instance could start from.

Before each download and each unpack the store reserves the bytes it is about to write
(``space.py`` decides, evicting unused images oldest first); when they cannot be found the pull
fails with ``noMemory`` and removes what it wrote. Removal by age and version count and the layer
re-verification are ``gc.py``'s.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Protocol, Set, Tuple

from ..errors import InvalidArgument, NoMemory, NotFound
from .blobs import BlobStore, digest_hex
from .itemconfig import ItemConfig, parse_item_config
from .layers import check_layer_type, remove_tree, tree_bytes, tree_digest, unpack_layer, unpacked_size_estimate
from .space import StoredImage, available_bytes, plan_space

log = logging.getLogger(__name__)

MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v2+json")


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


# --- The store ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Image:
    manifest_digest: str
    # Unpacked layer directories, bottom first (manifest order; overlayfs's lowerdir lists them top
    # first). A directory repeats where the manifest repeats a diff id.
    layers: Tuple[Path, ...]
    config: ImageConfig
    blobs: Tuple[str, ...]  # the blobs the image keeps: manifest, config, item config
    item_config: ItemConfig = ItemConfig()  # the defaults when the manifest names none


Resolver = Callable[[List[str]], List[str]]


class ImageUsage(Protocol):
    """What eviction needs to know from the launcher."""

    def images_in_use(self) -> Set[str]: ...

    def image_last_used(self) -> Mapping[str, float]: ...


class _Unused:
    def images_in_use(self) -> Set[str]:
        return set()

    def image_last_used(self) -> Mapping[str, float]:
        return {}


_UNKNOWN_BLOB_BYTES = 1 << 20  # a manifest's size is not in any descriptor: reserve this much


def _write_json(path: Path, value: Dict[str, Any]) -> None:
    temporary = path.with_name(path.name + ".new")
    with open(temporary, "w") as out:
        json.dump(value, out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)


@contextlib.contextmanager
def _space_errors(what: str) -> Iterator[None]:
    """ENOSPC while writing (the estimate was short, or something else filled the disk) is the
    same ``noMemory`` as a reservation that failed."""
    try:
        yield
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        raise NoMemory(f"not enough space: disk full writing {what}") from err


def _read_record(path: Path) -> Dict[str, Any]:
    """An install record's JSON object; {} when it is missing, unreadable or not an object."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


class ImageStore:
    """Images by manifest digest: pulled through ``resolver`` (digests -> URLs, GetBlobsInfos).

    ``usage`` says which images instances use and when each was last used (eviction order);
    ``limit_percent`` caps the store's share of its partition (``imagesPartLimit``)."""

    def __init__(self, root: Path, blobs: BlobStore, *, usage: Optional[ImageUsage] = None,
                 limit_percent: Optional[float] = None, clock: Callable[[], float] = time.time) -> None:
        self.root = root
        self.blobs = blobs
        self._usage: ImageUsage = usage or _Unused()
        self._limit_percent = limit_percent
        self._clock = clock
        for directory in (root / "layers", root / "images"):
            directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # reservations, evictions, pins, removals
        self._reserved = 0
        self._pins: "collections.Counter[str]" = collections.Counter()  # diff ids and blob digests of pulls under way
        self._layer_locks: Dict[str, threading.Lock] = {}

    # --- naming and records

    def layer_dir(self, diff_id: str) -> Path:
        return self.root / "layers" / digest_hex(diff_id)

    def _layer_record(self, diff_id: str) -> Path:
        return self.root / "layers" / f"{digest_hex(diff_id)}.json"

    def _image_record(self, manifest_digest: str) -> Path:
        return self.root / "images" / f"{digest_hex(manifest_digest)}.json"

    def has_layer(self, diff_id: str) -> bool:
        return self.layer_dir(diff_id).is_dir() and self._layer_record(diff_id).is_file()

    def installed(self) -> List[str]:
        return sorted(f"sha256:{p.stem}" for p in (self.root / "images").glob("*.json"))

    def layers(self) -> List[str]:
        """Diff ids of the unpacked layers."""
        return sorted(f"sha256:{p.name}" for p in (self.root / "layers").iterdir()
                      if p.is_dir() and not p.name.endswith(".partial"))

    def layer_info(self, diff_id: str) -> Dict[str, Any]:
        return _read_record(self._layer_record(diff_id))

    def image_info(self, manifest_digest: str) -> Dict[str, Any]:
        return _read_record(self._image_record(manifest_digest))

    def stored_images(self) -> List[StoredImage]:
        images = []
        last_used = self._usage.image_last_used()
        for digest in self.installed():
            info = self.image_info(digest)
            blobs = [d for d in info.get("blobs", []) if isinstance(d, str)]
            own = 0
            for blob in blobs:
                with contextlib.suppress(OSError, InvalidArgument):
                    own += self.blobs.path(blob).stat().st_size
            images.append(StoredImage(
                digest=digest, item_id=str(info.get("itemId", "")), installed=float(info.get("installed", 0.0)),
                last_used=last_used.get(digest),
                layers=frozenset(str(layer) for layer in info.get("layers", [])), own_bytes=own))
        return images

    def pinned(self) -> Set[str]:
        with self._lock:
            return {key for key, count in self._pins.items() if count > 0}

    @contextlib.contextmanager
    def _pinning(self, keys: List[str]) -> Iterator[None]:
        with self._lock:
            self._pins.update(keys)
        try:
            yield
        finally:
            with self._lock:
                self._pins.subtract(keys)
                for key in keys:
                    if self._pins[key] <= 0:
                        del self._pins[key]

    # --- space

    def store_bytes(self) -> int:
        total = sum(int(self.layer_info(d).get("bytes", 0)) for d in self.layers())
        for directory in (self.blobs.root / "sha256", self.blobs.root / "partial"):
            for path in directory.iterdir():
                with contextlib.suppress(OSError):
                    total += path.stat().st_blocks * 512
        return total

    @contextlib.contextmanager
    def reserve(self, needed: int, what: str) -> Iterator[None]:
        """Hold ``needed`` bytes of the image partition for the block; evicts unused images if
        that makes them fit, else raises NoMemory naming ``what``."""
        with self._lock:
            self._make_room(needed, what)
            self._reserved += needed
        try:
            yield
        finally:
            with self._lock:
                self._reserved -= needed

    def _make_room(self, needed: int, what: str) -> None:
        fs = os.statvfs(self.root)
        store_used = self.store_bytes() if self._limit_percent is not None else 0
        available = available_bytes(fs.f_bavail * fs.f_frsize, self._reserved, fs.f_blocks * fs.f_frsize,
                                    store_used, self._limit_percent)
        if needed <= available:
            return
        images = self.stored_images()
        layer_bytes = {d: int(self.layer_info(d).get("bytes", 0)) for d in self.layers()}
        pins = {key for key, count in self._pins.items() if count > 0}
        plan = plan_space(needed, available, images, layer_bytes, self._usage.images_in_use(), pins)
        if not plan.fits:
            raise NoMemory(f"not enough space: {what} needs {needed} B, {plan.short} B short")
        for digest in plan.evict:
            log.info("image %s evicted for space (%s needs %d bytes)", digest, what, needed)
            self._remove_locked(digest)

    # --- pulling

    def _fetch(self, resolver: Resolver, descriptors: List[Descriptor]) -> None:
        missing = [d for d in descriptors if not self.blobs.has(d.digest)]
        if not missing:
            return
        urls = resolver([d.digest for d in missing])
        for descriptor, url in zip(missing, urls):
            self._download(descriptor, url)

    def _download(self, descriptor: Descriptor, url: str) -> None:
        size = descriptor.size if descriptor.size is not None else _UNKNOWN_BLOB_BYTES
        what = f"blob {digest_hex(descriptor.digest)[:12]}"
        with self.reserve(size, what), _space_errors(what):
            self.blobs.fetch(descriptor.digest, url, descriptor.size)

    def pull(self, manifest_digest: str, resolver: Resolver, item_id: str = "") -> Image:
        """The image, from the store or pulled, verified and unpacked now. ``item_id`` is recorded
        for the removal policy (versions per item)."""
        with self._pinning([manifest_digest]):
            self._fetch(resolver, [Descriptor("", manifest_digest, None)])
            manifest = parse_manifest(self.blobs.path(manifest_digest).read_bytes())
            for index, layer in enumerate(manifest.layers):
                check_layer_type(layer.media_type, index)
            extras = [manifest.config] + ([manifest.item_config] if manifest.item_config else [])
            kept = [manifest_digest, *(d.digest for d in extras)]
            return self._pull_pinned(manifest_digest, manifest, extras, kept, resolver, item_id)

    def _pull_pinned(self, manifest_digest: str, manifest: Manifest, extras: List[Descriptor], kept: List[str],
                     resolver: Resolver, item_id: str) -> Image:
        with self._pinning(kept):
            self._fetch(resolver, extras)
            config = parse_image_config(self.blobs.path(manifest.config.digest).read_bytes())
            item_config = ItemConfig()
            if manifest.item_config is not None:
                item_config = parse_item_config(self.blobs.path(manifest.item_config.digest).read_bytes())
            if len(config.diff_ids) != len(manifest.layers):
                raise InvalidArgument(
                    f"image {manifest_digest}: {len(manifest.layers)} layers but {len(config.diff_ids)} diff ids")
            for diff_id in config.diff_ids:
                digest_hex(diff_id)
            with self._pinning(list(config.diff_ids) + [d.digest for d in manifest.layers]):
                if not all(self.has_layer(diff_id) for diff_id in config.diff_ids) \
                        or not self._image_record(manifest_digest).is_file():
                    self._install(manifest_digest, manifest, config, resolver, item_id, kept)
        return Image(manifest_digest, tuple(self.layer_dir(d) for d in config.diff_ids), config, tuple(kept),
                     item_config)

    def _install(self, manifest_digest: str, manifest: Manifest, config: ImageConfig, resolver: Resolver,
                 item_id: str, kept: List[str]) -> None:
        # A diff id can repeat (builders emit the same empty layer several times): unpacked once.
        wanted = list({diff_id: (layer, diff_id) for layer, diff_id in zip(manifest.layers, config.diff_ids)
                       if not self.has_layer(diff_id)}.values())
        fetched: List[str] = []
        try:
            missing = [layer for layer, _ in wanted if not self.blobs.has(layer.digest)]
            urls = dict(zip((d.digest for d in missing), resolver([d.digest for d in missing]))) if missing else {}
            for layer, diff_id in wanted:
                if layer.digest in urls:
                    self._download(layer, urls[layer.digest])
                    fetched.append(layer.digest)
                self._unpack(layer, diff_id)
        except BaseException:
            # Nothing half-done stays: blobs this pull downloaded for layers it could not unpack.
            for digest in fetched:
                self.blobs.remove(digest)
            raise
        _write_json(self._image_record(manifest_digest), {
            "layers": list(config.diff_ids), "itemId": item_id, "installed": self._clock(), "blobs": kept})

    def _unpack(self, layer: Descriptor, diff_id: str) -> None:
        with self._lock:
            lock = self._layer_locks.setdefault(diff_id, threading.Lock())
        with lock:
            if self.has_layer(diff_id):
                self.blobs.remove(layer.digest)
                return
            blob = self.blobs.path(layer.digest)
            what = f"layer {digest_hex(diff_id)[:12]}"
            target = self.layer_dir(diff_id)
            partial = target.with_name(target.name + ".partial")
            with self.reserve(unpacked_size_estimate(blob), what):
                try:
                    with _space_errors(what):
                        remove_tree(partial)
                        remove_tree(target)
                        partial.mkdir()
                        unpack_layer(blob, partial, diff_id)
                        _write_json(self._layer_record(diff_id), {
                            "diffId": diff_id, "tree": tree_digest(partial), "bytes": tree_bytes(partial),
                            "verified": self._clock()})
                        os.replace(partial, target)
                except BaseException:
                    remove_tree(partial)
                    raise
            self.blobs.remove(layer.digest)

    # --- removal

    def remove(self, manifest_digest: str) -> None:
        """Forget the image; its blobs and the layers no other image (nor a pull under way) uses
        go with it."""
        with self._lock:
            self._remove_locked(manifest_digest)

    def _remove_locked(self, manifest_digest: str) -> None:
        info = self.image_info(manifest_digest)
        with contextlib.suppress(FileNotFoundError):
            self._image_record(manifest_digest).unlink()
        others = self.stored_images()
        used_layers = set().union(*(image.layers for image in others)) if others else set()
        used_blobs: Set[str] = set()
        for digest in self.installed():
            used_blobs.update(str(d) for d in self.image_info(digest).get("blobs", []))
        pins = {key for key, count in self._pins.items() if count > 0}
        for diff_id in info.get("layers", []):
            if diff_id not in used_layers and diff_id not in pins:
                self._remove_layer_locked(str(diff_id))
        for blob in info.get("blobs", [manifest_digest]):
            if blob not in used_blobs and blob not in pins:
                with contextlib.suppress(InvalidArgument):
                    self.blobs.remove(str(blob))

    def _remove_layer_locked(self, diff_id: str) -> None:
        # The record goes last: a layer directory without one is not "had" and is unpacked again.
        target = self.layer_dir(diff_id)
        with contextlib.suppress(FileNotFoundError):
            self._layer_record(diff_id).unlink()
        remove_tree(target)

    def remove_layer(self, diff_id: str) -> None:
        with self._lock:
            if self._pins.get(diff_id, 0) <= 0:
                self._remove_layer_locked(diff_id)

    def verify_layer(self, diff_id: str) -> Optional[str]:
        """None when the unpacked layer still hashes to its record, else what is wrong."""
        recorded = self.layer_info(diff_id).get("tree")
        if not isinstance(recorded, str):
            return "no verification record"
        try:
            actual = tree_digest(self.layer_dir(diff_id))
        except OSError as err:
            return f"unreadable: {err}"
        if actual != recorded:
            return f"tree digest {actual} differs from the one recorded at install, {recorded}"
        return None

    def leftovers(self) -> List[Path]:
        """What no image or layer owns: partial layers, records without a directory, directories
        without a record, anything from an older layout; except what a pull under way uses."""
        pins = self.pinned()
        found: List[Path] = []
        for path in self.root.iterdir():
            if path.name not in ("layers", "images"):
                found.append(path)
        found += (self.root / "images").glob("*.new")  # a record write the agent died in
        for path in (self.root / "layers").iterdir():
            stem = path.name.split(".", 1)[0]
            if f"sha256:{stem}" in pins:
                continue
            if path.name.endswith(".partial") or path.name.endswith(".new"):
                found.append(path)
            elif path.suffix == ".json" and not (path.parent / stem).is_dir():
                found.append(path)
            elif path.is_dir() and not (path.parent / f"{stem}.json").is_file():
                found.append(path)
        return found

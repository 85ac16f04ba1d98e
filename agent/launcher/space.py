"""Pure decisions of the image store: what to evict for space, and what the removal policy drops.

No I/O, no clock: sizes, times and the set of images in use come in, digests go out. The image
store (``image.py``) measures, decides here, then acts; ``gc.py`` does the same for the sweep.

Space (INSTANCES.md "The image"; the reference's spaceallocator): before a download or an unpack
the store reserves the bytes it is about to write. What is available is the filesystem's free
space less what other pulls reserved, and, when ``imagesPartLimit`` caps the store at a share of
the partition, no more than that share less what the store already holds. When short, images no
instance uses are evicted oldest use first, each freeing its own blobs and the layers no remaining
image shares; when even evicting all of them would not be enough, nothing is evicted (it would
only lose images) and the install fails with ``noMemory``.

Removal (``updateItemTTL``): an image no instance uses is removed once unused for the TTL; of the
images of one item at most :data:`VERSIONS_KEPT` are kept, the newest by last use or install
time; an image in use is never removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AbstractSet, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple

VERSIONS_KEPT = 2


@dataclass(frozen=True)
class StoredImage:
    """An installed image as the decisions see it."""

    digest: str
    item_id: str
    installed: float  # wall seconds
    last_used: Optional[float]  # wall seconds; None: never recorded
    layers: FrozenSet[str]  # diff ids
    own_bytes: int = 0  # its manifest, config and item config blobs

    @property
    def recency(self) -> float:
        return max(self.installed, self.last_used or 0.0)


@dataclass(frozen=True)
class SpacePlan:
    fits: bool
    evict: Tuple[str, ...]  # digests, in eviction order; empty when not ``fits``
    available: int  # bytes available before evicting
    short: int  # bytes missing when not ``fits`` (after evicting everything evictable)


def available_bytes(free: int, reserved: int, partition: int, store_used: int,
                    limit_percent: Optional[float]) -> int:
    """What a new reservation may take: free space less reservations, and within the store's
    share of the partition when ``limit_percent`` caps it."""
    available = free - reserved
    if limit_percent is not None:
        available = min(available, int(partition * limit_percent / 100) - store_used - reserved)
    return max(0, available)


def _freed(evicted: AbstractSet[str], images: Mapping[str, StoredImage], layer_bytes: Mapping[str, int],
           pinned_layers: AbstractSet[str]) -> int:
    kept_layers = set(pinned_layers)
    for digest, image in images.items():
        if digest not in evicted:
            kept_layers |= image.layers
    dropped = set().union(*(images[d].layers for d in evicted)) - kept_layers if evicted else set()
    return sum(images[d].own_bytes for d in evicted) + sum(layer_bytes.get(layer, 0) for layer in dropped)


def plan_space(needed: int, available: int, images: Sequence[StoredImage], layer_bytes: Mapping[str, int],
               in_use: AbstractSet[str], pinned_layers: AbstractSet[str] = frozenset()) -> SpacePlan:
    """Which unused images to evict so that ``needed`` bytes fit; ``pinned_layers`` are layers a
    pull under way relies on (never counted as freed)."""
    if needed <= available:
        return SpacePlan(True, (), available, 0)
    by_digest = {image.digest: image for image in images}
    candidates = sorted((i for i in images if i.digest not in in_use), key=lambda i: (i.recency, i.digest))
    evicted: List[str] = []
    freed = 0
    for image in candidates:
        evicted.append(image.digest)
        freed = _freed(set(evicted), by_digest, layer_bytes, pinned_layers)
        if available + freed >= needed:
            return SpacePlan(True, tuple(evicted), available, 0)
    return SpacePlan(False, (), available, needed - available - freed)


def images_to_remove(images: Sequence[StoredImage], in_use: AbstractSet[str], now: float,
                     ttl: float) -> Dict[str, str]:
    """digest -> why, for the images the removal policy drops now."""
    drop: Dict[str, str] = {}
    by_item: Dict[str, List[StoredImage]] = {}
    for image in images:
        by_item.setdefault(image.item_id, []).append(image)
        if image.digest in in_use:
            continue
        unused_since = image.recency
        if now - unused_since >= ttl:
            drop[image.digest] = f"unused for {now - unused_since:.0f} s"
    for item_id, versions in by_item.items():
        if not item_id:
            continue  # installed before items were recorded: the TTL alone applies
        newest_first = sorted(versions, key=lambda i: (i.recency, i.digest), reverse=True)
        for image in newest_first[VERSIONS_KEPT:]:
            if image.digest not in in_use:
                drop.setdefault(image.digest, f"more than {VERSIONS_KEPT} versions of {item_id}")
    return drop


def images_losing_layers(images: Sequence[StoredImage], bad_layers: AbstractSet[str]) -> Tuple[str, ...]:
    """The images that use any of ``bad_layers``."""
    return tuple(image.digest for image in images if image.layers & bad_layers)

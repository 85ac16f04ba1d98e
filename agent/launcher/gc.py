"""The image store's sweep: the removal policy, layer re-verification, and what nothing owns.

Removal (``space.images_to_remove``): an image no desired instance uses goes once unused for
``updateItemTTL`` (CM often stops and restarts an instance with the same image, and a pull is the
slow part of a start), and beyond the two newest versions of its item. Layers and blobs go with
the last image that uses them.

Verification (the periodic sweep, ``verify=True``): each unpacked layer's tree is hashed again
and compared with the digest recorded when it was installed (``layers.tree_digest``; the packed
blob is gone by then, so the diff id cannot be checked again). A layer that differs is dropped
with the images that use it; an image in use keeps it until it is unused, and the problem is
returned for a CoreAlert.

Last, whatever nothing owns is removed: unreferenced layers and blobs, partial layers and
downloads of pulls that died with the agent, and the previous layout's merged rootfs directories.
A pull under way pins what it uses, so none of this touches it.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Dict, List, Set

from .image import ImageStore
from .layers import remove_tree
from .space import StoredImage, images_losing_layers, images_to_remove
from .store import LauncherStore

log = logging.getLogger(__name__)


def collect_garbage(store: LauncherStore, images: ImageStore, in_use: Set[str], now: float, ttl: float, *,
                    verify: bool = False) -> List[str]:
    """One sweep; returns the problems CM should hear of (corrupt layers an instance still uses)."""
    problems: List[str] = []
    # An image never used since it was installed counts from its install time (its record).
    use = store.image_use()
    stored = [dataclasses.replace(image, last_used=use.get(image.digest)) for image in images.stored_images()]
    if verify:
        problems += _drop_corrupt_layers(store, images, stored, in_use)
        stored = [image for image in stored if image.digest in set(images.installed())]
    for digest, why in sorted(images_to_remove(stored, in_use, now, ttl).items()):
        log.info("image %s removed: %s", digest, why)
        images.remove(digest)
        store.forget_image(digest)
    _remove_unowned(store, images, in_use, set(use))
    return problems


def _drop_corrupt_layers(store: LauncherStore, images: ImageStore, stored: List[StoredImage],
                         in_use: Set[str]) -> List[str]:
    pinned = images.pinned()
    bad: Dict[str, str] = {}
    for diff_id in images.layers():
        if diff_id in pinned:
            continue
        problem = images.verify_layer(diff_id)
        if problem is not None:
            bad[diff_id] = problem
    problems: List[str] = []
    kept_layers: Set[str] = set()
    for digest in images_losing_layers(stored, set(bad)):
        image = next(i for i in stored if i.digest == digest)
        if digest in in_use:
            kept_layers |= image.layers & set(bad)
            problems.append(f"corrupt image layer in use: image {digest} kept until unused")
            log.error("image %s is in use and has a corrupt layer (%s): kept until unused", digest,
                      "; ".join(f"{d}: {bad[d]}" for d in sorted(image.layers & set(bad))))
            continue
        log.error("image %s removed: a layer of it is corrupt", digest)
        images.remove(digest)
        store.forget_image(digest)
    for diff_id in sorted(set(bad) - kept_layers):
        log.error("layer %s removed: %s", diff_id, bad[diff_id])
        images.remove_layer(diff_id)
    return problems


def _remove_unowned(store: LauncherStore, images: ImageStore, in_use: Set[str], recorded: Set[str]) -> None:
    installed = images.installed()
    pinned = images.pinned()
    used_layers: Set[str] = set()
    keep_blobs: Set[str] = set(pinned)
    for digest in installed:
        info = images.image_info(digest)
        used_layers.update(str(d) for d in info.get("layers", []))
        keep_blobs.update(str(d) for d in info.get("blobs", []))
    for diff_id in images.layers():
        if diff_id not in used_layers:
            images.remove_layer(diff_id)  # skips pinned ones
    for path in images.leftovers():
        log.info("image store: %s belongs to nothing: removed", path.name)
        remove_tree(path)
    for digest in images.blobs.digests():
        if digest not in keep_blobs:
            images.blobs.remove(digest)
    images.blobs.remove_partials(except_for=pinned)
    for digest in recorded - set(installed) - in_use:
        store.forget_image(digest)

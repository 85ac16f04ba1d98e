"""Garbage collection of images and blobs no instance uses.

An image is removed once no desired instance uses it and it was last used more than ``ttl``
seconds ago (``imageTTL``: CM often stops and restarts an instance with the same image, and a
pull is the slow part of a start). A blob is removed when no installed image refers to it, so the
blobs of a pull that failed (a tampered layer, an unreachable URL) do not linger.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Set

from ..errors import AosError
from .image import ImageStore, parse_manifest
from .store import LauncherStore

log = logging.getLogger(__name__)


def _referenced_blobs(images: ImageStore, digest: str) -> Set[str]:
    blobs = {digest}
    with contextlib.suppress(OSError, AosError):
        manifest = parse_manifest(images.blobs.path(digest).read_bytes())
        blobs.add(manifest.config.digest)
        blobs.update(layer.digest for layer in manifest.layers)
        if manifest.item_config is not None:
            blobs.add(manifest.item_config.digest)
    return blobs


def collect_garbage(store: LauncherStore, images: ImageStore, in_use: Set[str], now: float, ttl: float) -> None:
    use = store.image_use()
    for digest in images.installed():
        if digest in in_use:
            continue
        last_used = use.get(digest)
        if last_used is None:
            # Unpacked but never recorded (the agent died between the two): start the clock now.
            store.touch_image(digest, now)
        elif now - last_used >= ttl:
            log.info("image %s unused for %.0f s: removed", digest, now - last_used)
            images.remove(digest)
            store.forget_image(digest)
    keep: Set[str] = set()
    for digest in set(images.installed()) | in_use:
        keep |= _referenced_blobs(images, digest)
    for digest in images.blobs.digests():
        if digest not in keep:
            images.blobs.remove(digest)

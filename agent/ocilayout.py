"""Reading a local OCI image layout (``oci-layout``, ``index.json``, ``blobs/sha256/...``): the
directory ``skopeo copy ... oci:DIR`` and ``buildah push ... oci:DIR`` write. The CM simulator
serves one image of it (``aos-sm cm-sim --image DIR[:REF]``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from .demo_image import Blob, ServedImage

REF_NAME = "org.opencontainers.image.ref.name"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")
# The layer types the SM unpacks (INSTANCES.md, "The image"); anything else it refuses.
LAYER_TYPES = ("application/vnd.oci.image.layer.v1.tar", "application/vnd.oci.image.layer.v1.tar+gzip")


class OciLayoutError(ValueError):
    """The directory is not a usable OCI layout; the message says what is wrong, in one line."""


def _json(path: Path, what: str) -> Dict[str, Any]:
    try:
        value = json.loads(path.read_bytes())
    except OSError as err:
        raise OciLayoutError(f"cannot read {what} {path}: {err.strerror or err}") from err
    except ValueError as err:
        raise OciLayoutError(f"{what} {path} is not JSON: {err}") from err
    if not isinstance(value, dict):
        raise OciLayoutError(f"{what} {path} is not a JSON object")
    return value


def _blob_path(root: Path, digest: Any) -> Path:
    if not isinstance(digest, str) or not digest.startswith("sha256:") or len(digest) != 71 \
            or any(c not in "0123456789abcdef" for c in digest[7:]):
        raise OciLayoutError(f"{root}: unsupported digest {digest!r} (sha256 only)")
    path = root / "blobs" / "sha256" / digest[7:]
    if not path.is_file():
        raise OciLayoutError(f"{root}: blob {digest} is missing from blobs/sha256")
    return path


def _pick(root: Path, manifests: List[Any], ref: Optional[str]) -> Dict[str, Any]:
    entries = [m for m in manifests if isinstance(m, dict)]
    if ref is not None:
        named = [m for m in entries if (m.get("annotations") or {}).get(REF_NAME) == ref]
        if not named:
            names = sorted({str((m.get("annotations") or {}).get(REF_NAME)) for m in entries})
            raise OciLayoutError(f"{root}: no image named {ref!r} in index.json (names: {', '.join(names)})")
        return named[0]
    if not entries:
        raise OciLayoutError(f"{root}: index.json lists no manifest")
    return entries[0]


def load_oci_layout(root: Path, ref: Optional[str] = None) -> ServedImage:
    """The image ``ref`` (its ``org.opencontainers.image.ref.name``) of the layout at ``root``, or
    its first manifest; every blob the manifest names must be there."""
    if not root.is_dir():
        raise OciLayoutError(f"{root} is not a directory")
    if not (root / "oci-layout").is_file():
        raise OciLayoutError(f"{root} is not an OCI image layout: no oci-layout file "
                             "(`skopeo copy docker://IMAGE oci:DIR` writes one)")
    layout = _json(root / "oci-layout", "oci-layout file")
    if "imageLayoutVersion" not in layout:
        raise OciLayoutError(f"{root}/oci-layout has no imageLayoutVersion: not an OCI layout")
    index = _json(root / "index.json", "index")
    manifests = index.get("manifests")
    if not isinstance(manifests, list):
        raise OciLayoutError(f"{root}/index.json has no manifests list")
    entry = _pick(root, manifests, ref)
    digest = entry.get("digest")
    manifest_path = _blob_path(root, digest)
    manifest = _json(manifest_path, "manifest")
    media_type = entry.get("mediaType") or manifest.get("mediaType")
    if media_type in INDEX_TYPES:
        raise OciLayoutError(f"{root}: {digest} is an image index (several platforms); copy one platform: "
                             "skopeo copy --override-arch ARCH docker://IMAGE oci:DIR")
    if media_type != MANIFEST_TYPE:
        raise OciLayoutError(f"{root}: {digest} is a {media_type}, not an OCI image manifest "
                             "(skopeo copy --format oci docker://IMAGE oci:DIR)")
    for layer in manifest.get("layers") or []:
        if isinstance(layer, dict) and layer.get("mediaType") not in LAYER_TYPES:
            raise OciLayoutError(f"{root}: layer {layer.get('digest')} is {layer.get('mediaType')}; the SM unpacks "
                                 "only tar and tar+gzip OCI layers (skopeo copy --dest-compress-format gzip ...)")
    blobs: Dict[str, Blob] = {str(digest): manifest_path}
    descriptors = [manifest.get("config")] + list(manifest.get("layers") or [])
    descriptors += [value for key, value in manifest.items() if key in ("aosItemConfig", "aosService")]
    for descriptor in descriptors:
        if not isinstance(descriptor, dict):
            raise OciLayoutError(f"{manifest_path}: a descriptor is not an object")
        blobs[str(descriptor.get("digest"))] = _blob_path(root, descriptor.get("digest"))
    name = (entry.get("annotations") or {}).get(REF_NAME)
    item = " and an item config" if len(descriptors) > 1 + len(manifest.get("layers") or []) else ""
    layers = len(manifest.get("layers") or [])
    return ServedImage(str(digest), blobs, f"{root}{':' + name if name else ''}: {layers} layer(s){item}")


def write_oci_layout(root: Path, blobs: Dict[str, bytes], manifest_digest: str, ref: Optional[str] = None) -> None:
    """Write ``blobs`` as an OCI layout with ``manifest_digest`` in its index (tests, and
    ``aos-sm cm-sim`` users who want the demo image on disk)."""
    (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    for digest, data in blobs.items():
        (root / "blobs" / "sha256" / digest.split(":", 1)[1]).write_bytes(data)
    (root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    entry: Dict[str, Any] = {"mediaType": MANIFEST_TYPE, "digest": manifest_digest,
                             "size": len(blobs[manifest_digest])}
    if ref is not None:
        entry["annotations"] = {REF_NAME: ref}
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))

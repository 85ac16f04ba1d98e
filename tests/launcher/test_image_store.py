"""The image store: shared layers, space reservation and eviction (on a real tmpfs), resumed
downloads (against a real HTTP server that drops connections), the removal policy and the sweep's
re-verification; and the pure decisions behind them."""

from __future__ import annotations

import contextlib
import gzip
import http.server
import io
import json
import os
import subprocess
import tarfile
import threading
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Set

import pytest

from oci_fixture import build_image, sha256

from aos_sm.agent.errors import InvalidArgument, NoMemory
from aos_sm.agent.launcher.blobs import BlobStore, retry_delay
from aos_sm.agent.launcher.gc import collect_garbage
from aos_sm.agent.launcher.image import ImageStore
from aos_sm.agent.launcher.space import (StoredImage, available_bytes, images_losing_layers, images_to_remove,
                                         plan_space)
from aos_sm.agent.launcher.store import LauncherStore

MiB = 1 << 20


def _layer(files: Mapping[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class FakeUsage:
    """What the launcher tells the store: images in use and when each was last used."""

    def __init__(self) -> None:
        self.in_use: Set[str] = set()
        self.last_used: Dict[str, float] = {}

    def images_in_use(self) -> Set[str]:
        return set(self.in_use)

    def image_last_used(self) -> Mapping[str, float]:
        return dict(self.last_used)


def _resolver(served: Path, image_blobs: Dict[str, bytes]):  # type: ignore[no-untyped-def]
    served.mkdir(parents=True, exist_ok=True)
    for digest, data in image_blobs.items():
        (served / digest.split(":")[1]).write_bytes(data)
    return lambda digests: [(served / d.split(":")[1]).as_uri() for d in digests]


def _store_files(root: Path) -> List[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# --- pure decisions


def _image(digest: str, layers: str, last_used: Optional[float] = None, *, item: str = "",
           installed: float = 0.0, own: int = 0) -> StoredImage:
    return StoredImage(digest, item, installed, last_used, frozenset(layers.split()), own)


def test_space_that_fits_evicts_nothing() -> None:
    plan = plan_space(100, 100, [_image("a", "L1", 1.0)], {"L1": 50}, set())
    assert (plan.fits, plan.evict) == (True, ())


def test_eviction_takes_unused_images_oldest_first_and_stops_when_it_fits() -> None:
    images = [_image("new", "N", 30.0), _image("old", "O", 10.0), _image("mid", "M", 20.0), _image("used", "U", 0.0)]
    sizes = {"N": 40, "O": 40, "M": 40, "U": 500}
    plan = plan_space(100, 30, images, sizes, in_use={"used"})
    assert (plan.fits, plan.evict) == (True, ("old", "mid"))  # 30 + 40 + 40 >= 100; "used" never


def test_a_layer_another_image_keeps_is_not_counted_as_freed() -> None:
    images = [_image("a", "BASE A", 1.0, own=1), _image("b", "BASE B", 2.0, own=1)]
    sizes = {"BASE": 1000, "A": 10, "B": 10}
    # Evicting "a" alone frees A and its blobs (11), not BASE: "b" still uses it.
    assert plan_space(20, 10, images, sizes, set()).evict == ("a",)
    assert plan_space(1000, 10, images, sizes, set()).evict == ("a", "b")  # both: BASE goes too


def test_layers_a_pull_under_way_relies_on_are_never_counted_as_freed() -> None:
    images = [_image("a", "BASE", 1.0)]
    plan = plan_space(500, 0, images, {"BASE": 1000}, set(), pinned_layers={"BASE"})
    assert (plan.fits, plan.evict, plan.short) == (False, (), 500)


def test_when_even_evicting_everything_is_short_nothing_is_evicted() -> None:
    images = [_image("a", "A", 1.0), _image("b", "B", 2.0), _image("c", "C", 0.0)]
    plan = plan_space(1000, 100, images, {"A": 200, "B": 200, "C": 5000}, in_use={"c"})
    assert (plan.fits, plan.evict, plan.short) == (False, (), 500)


def test_available_space_is_free_space_less_reservations_within_the_partition_limit() -> None:
    assert available_bytes(free=800, reserved=100, partition=1000, store_used=0, limit_percent=None) == 700
    # A 50 % cap on a 1000-byte partition with 300 already in the store: 200 left, 100 reserved.
    assert available_bytes(free=800, reserved=100, partition=1000, store_used=300, limit_percent=50) == 100
    assert available_bytes(free=50, reserved=100, partition=1000, store_used=0, limit_percent=None) == 0


def test_removal_policy_drops_unused_images_after_the_ttl_never_one_in_use() -> None:
    images = [_image("stale", "A", 100.0), _image("fresh", "B", 950.0), _image("used", "C", 0.0),
              _image("never-used", "D", None, installed=500.0)]
    drop = images_to_remove(images, in_use={"used"}, now=1000.0, ttl=300.0)
    assert sorted(drop) == ["never-used", "stale"] and "unused for 900 s" in drop["stale"]


def test_removal_policy_keeps_the_two_newest_versions_of_an_item() -> None:
    images = [_image("v1", "A", 10.0, item="svc"), _image("v2", "B", 20.0, item="svc"),
              _image("v3", "C", None, item="svc", installed=30.0), _image("v0", "D", 5.0, item="svc"),
              _image("other", "E", 1.0, item="other")]
    drop = images_to_remove(images, in_use={"v0"}, now=40.0, ttl=1000.0)
    assert sorted(drop) == ["v1"]  # v3 (installed last) and v2 kept; v0 in use; "other" alone
    assert "more than 2 versions of svc" in drop["v1"]


def test_images_using_a_bad_layer_are_named() -> None:
    images = [_image("a", "X Y", 1.0), _image("b", "Y", 1.0), _image("c", "Z", 1.0)]
    assert images_losing_layers(images, {"Y"}) == ("a", "b")


def test_retry_delays_start_at_one_second_and_stop_growing_at_five() -> None:
    assert [retry_delay(n) for n in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]


# --- the store on real files


def test_two_images_sharing_a_base_layer_store_it_once_and_keep_no_packed_layers(tmp_path: Path) -> None:
    base = _layer({"lib/base.so": b"base" * 1000})
    first = build_image([base, _layer({"app/one": b"1"})], cmd=["/app/one"])
    second = build_image([base, _layer({"app/two": b"2"})], cmd=["/app/two"])
    images = ImageStore(tmp_path / "images", BlobStore(tmp_path / "blobs"))
    one = images.pull(first.manifest_digest, _resolver(tmp_path / "served", first.blobs), "one")
    two = images.pull(second.manifest_digest, _resolver(tmp_path / "served", second.blobs), "two")
    layer_dirs = [p for p in (tmp_path / "images" / "layers").iterdir() if p.is_dir()]
    assert len(layer_dirs) == 3  # base, app/one, app/two
    assert one.layers[0] == two.layers[0] and one.layers[1] != two.layers[1]  # bottom first, as in the manifest
    assert (one.layers[0] / "lib/base.so").read_bytes() == b"base" * 1000
    kept = set(images.blobs.digests())
    for image in (first, second):
        assert not kept & set(image.layer_digests)  # the packed layers are gone
    # Removing one image keeps the layer the other still uses.
    images.remove(first.manifest_digest)
    assert images.installed() == [second.manifest_digest]
    assert sorted(images.layers()) == sorted(sha256(layer) for layer in (base, _layer({"app/two": b"2"})))


def test_an_unsupported_layer_media_type_is_refused_before_any_download(tmp_path: Path) -> None:
    image = build_image([_layer({"f": b"x"})])
    manifest = json.loads(image.blobs[image.manifest_digest])
    manifest["layers"][0]["mediaType"] = "application/vnd.oci.image.layer.v1.tar+zstd"
    data = json.dumps(manifest).encode()
    blobs = dict(image.blobs)
    blobs[sha256(data)] = data
    images = ImageStore(tmp_path / "images", BlobStore(tmp_path / "blobs"))
    with pytest.raises(InvalidArgument, match=r"^unsupported layer media type .*tar\+zstd"):
        images.pull(sha256(data), _resolver(tmp_path / "served", blobs))
    assert images.blobs.digests() == [sha256(data)]  # the manifest only


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted under the test's directory (unmounted afterwards)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.system
def test_a_full_store_evicts_an_unused_image_and_fails_with_no_memory_when_even_that_is_short(
        tmp_path: Path, tmpfs: Path) -> None:
    usage = FakeUsage()
    images = ImageStore(tmpfs / "images", BlobStore(tmpfs / "blobs"), usage=usage)
    old = build_image([_layer({"data": os.urandom(int(1.4 * MiB))})])
    new = build_image([_layer({"data": os.urandom(int(1.4 * MiB))})])
    huge = build_image([_layer({"data": os.urandom(5 * MiB)})])
    images.pull(old.manifest_digest, _resolver(tmp_path / "served", old.blobs))
    usage.last_used[old.manifest_digest] = 100.0
    # The new layer's blob fits next to the old image, but not its unpacked copy as well: the
    # unused old image is evicted to make room.
    images.pull(new.manifest_digest, _resolver(tmp_path / "served", new.blobs))
    assert images.installed() == [new.manifest_digest]
    assert images.layers() == [sha256(_layer_of(new))]

    usage.in_use.add(new.manifest_digest)
    with pytest.raises(NoMemory) as caught:
        images.pull(huge.manifest_digest, _resolver(tmp_path / "served", huge.blobs))
    assert caught.value.to_error_info().aos_code == 3
    assert caught.value.message.startswith("not enough space: blob "), caught.value.message
    assert images.installed() == [new.manifest_digest]  # in use: kept, and nothing else was evicted
    leftovers = [name for name in _store_files(tmpfs) if "partial" in name and name != "blobs/partial"]
    assert leftovers == []
    assert not set(huge.layer_digests) & set(images.blobs.digests())


def _layer_of(image: object) -> bytes:
    (digest,) = image.layer_digests  # type: ignore[attr-defined]
    return gzip.decompress(image.blobs[digest])  # type: ignore[attr-defined]


@pytest.mark.system
def test_an_unpack_that_does_not_fit_leaves_no_partial_layer_nor_its_blob(tmp_path: Path, tmpfs: Path) -> None:
    # 2.2 MiB of zeros compress to a few KiB: the download fits, the unpacked layer cannot.
    image = build_image([_layer({"zeros": bytes(int(4.5 * MiB))})])
    images = ImageStore(tmpfs / "images", BlobStore(tmpfs / "blobs"))
    with pytest.raises(NoMemory, match=r"^not enough space: layer "):
        images.pull(image.manifest_digest, _resolver(tmp_path / "served", image.blobs))
    assert images.installed() == [] and images.layers() == []
    assert [p for p in (tmpfs / "images" / "layers").iterdir()] == []
    assert not set(image.layer_digests) & set(images.blobs.digests())
    assert list((tmpfs / "blobs" / "partial").iterdir()) == []


# --- downloads


class _DroppingHandler(http.server.BaseHTTPRequestHandler):
    """Serves one blob, honours ``Range: bytes=N-``, and for the first ``drops`` requests sends a
    third of what it promised and closes the connection. Counts the body bytes it sent."""

    blob = b""
    drops = 0
    sent = 0
    ranges: List[Optional[str]] = []
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        cls = type(self)
        requested = self.headers.get("Range")
        cls.ranges.append(requested)
        start = int(requested.split("=")[1].rstrip("-")) if requested else 0
        body = self.blob[start:]
        self.send_response(206 if requested else 200)
        if requested:
            self.send_header("Content-Range", f"bytes {start}-{len(self.blob) - 1}/{len(self.blob)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if cls.drops > 0:
            cls.drops -= 1
            body = body[:len(body) // 3]
            self.close_connection = True
        self.wfile.write(body)
        self.wfile.flush()
        cls.sent += len(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def dropping_server(data: bytes, drops: int) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 serving ``data`` that drops the connection ``drops`` times
    mid-blob; yields the blob's URL."""
    _DroppingHandler.blob, _DroppingHandler.drops, _DroppingHandler.sent, _DroppingHandler.ranges = data, drops, 0, []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _DroppingHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/blob"
    finally:
        server.shutdown()
        server.server_close()


def test_a_download_dropped_twice_mid_blob_completes_fetching_each_byte_once(tmp_path: Path) -> None:
    data = os.urandom(600_000)
    waits: List[float] = []
    with dropping_server(data, drops=2) as url:
        store = BlobStore(tmp_path / "store", sleep=waits.append)
        assert store.fetch(sha256(data), url, len(data)).read_bytes() == data
    assert _DroppingHandler.ranges[0] is None and len(_DroppingHandler.ranges) == 3
    assert all(r is not None and r.startswith("bytes=") for r in _DroppingHandler.ranges[1:])
    assert _DroppingHandler.sent == len(data)  # every byte once: each try resumed where the last stopped
    assert waits == [1.0, 2.0]


def test_a_download_that_keeps_breaking_fails_with_its_cause_and_leaves_no_partial_file(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    with dropping_server(data, drops=5) as url:
        store = BlobStore(tmp_path / "store", sleep=lambda _: None)
        with pytest.raises(Exception, match=r"^download failed after 3 tries: connection closed"):
            store.fetch(sha256(data), url, len(data))
    assert len(_DroppingHandler.ranges) == 3
    assert list((tmp_path / "store" / "partial").iterdir()) == []


# --- the sweep


def test_the_sweep_drops_a_corrupt_layer_with_its_unused_image_and_reports_one_in_use(tmp_path: Path) -> None:
    shared = _layer({"lib/shared": b"shared"})
    used = build_image([shared, _layer({"app": b"used"})])
    unused = build_image([shared, _layer({"app": b"unused"})])
    images = ImageStore(tmp_path / "images", BlobStore(tmp_path / "blobs"), clock=lambda: 1000.0)
    for image in (used, unused):
        images.pull(image.manifest_digest, _resolver(tmp_path / "served", image.blobs))
    store = LauncherStore(tmp_path / "launcher.db")
    assert collect_garbage(store, images, {used.manifest_digest}, 1001.0, ttl=3600, verify=True) == []
    assert len(images.installed()) == 2  # intact: nothing to do

    (images.layer_dir(sha256(shared)) / "lib/shared").write_bytes(b"tampered")
    problems = collect_garbage(store, images, {used.manifest_digest}, 1002.0, ttl=3600, verify=True)
    assert images.installed() == [used.manifest_digest]  # the unused one went with the bad layer
    assert len(problems) == 1 and problems[0].startswith("corrupt image layer in use")
    assert sha256(shared) in images.layers()  # kept while an instance uses it

    problems = collect_garbage(store, images, set(), 1003.0, ttl=3600, verify=True)
    assert images.installed() == [] and images.layers() == [] and problems == []


def test_the_sweep_keeps_two_versions_per_item_and_removes_what_nothing_owns(tmp_path: Path) -> None:
    clock = [100.0]
    images = ImageStore(tmp_path / "images", BlobStore(tmp_path / "blobs"), clock=lambda: clock[0])
    versions = [build_image([_layer({"v": str(n).encode()})]) for n in range(3)]
    for image in versions:
        clock[0] += 10
        images.pull(image.manifest_digest, _resolver(tmp_path / "served", image.blobs), "svc")
    (tmp_path / "images" / "0123abcd").mkdir()  # the previous layout's per-image rootfs directory
    (tmp_path / "images" / "layers" / ("ab" * 32 + ".partial")).mkdir()  # an unpack the agent died in
    store = LauncherStore(tmp_path / "launcher.db")
    collect_garbage(store, images, set(), 200.0, ttl=3600)
    assert images.installed() == sorted(v.manifest_digest for v in versions[1:])
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["images", "layers"]
    assert len(images.layers()) == 2 and not any(p.name.endswith(".partial")
                                                 for p in (tmp_path / "images" / "layers").iterdir())


def test_a_layer_the_manifest_repeats_is_downloaded_and_unpacked_once(tmp_path: Path) -> None:
    empty = _layer({})
    image = build_image([empty, _layer({"f": b"x"}), empty])
    asked: List[List[str]] = []
    resolve = _resolver(tmp_path / "served", image.blobs)
    images = ImageStore(tmp_path / "images", BlobStore(tmp_path / "blobs"))
    pulled = images.pull(image.manifest_digest, lambda ds: asked.append(ds) or resolve(ds))
    assert pulled.layers[0] == pulled.layers[2] and len(images.layers()) == 2
    assert [len(set(ds)) for ds in asked] == [1, 1, 2]  # manifest, config, the two distinct layers


def test_the_space_and_removal_decisions_import_nothing_that_does_io() -> None:
    from test_lifecycle import FORBIDDEN, imported_roots

    import aos_sm.agent.launcher.space as space

    roots = imported_roots(Path(space.__file__))
    assert not roots & FORBIDDEN and not any(root.startswith(".") for root in roots), roots


@pytest.mark.system
def test_images_part_limit_caps_the_store_below_the_free_space(tmp_path: Path, tmpfs: Path) -> None:
    image = build_image([_layer({"data": os.urandom(int(1.4 * MiB))})])
    capped = ImageStore(tmpfs / "capped" / "images", BlobStore(tmpfs / "capped" / "blobs"), limit_percent=25)
    with pytest.raises(NoMemory, match=r"^not enough space: blob "):  # 1 MiB allowed of 4, 1.4 needed
        capped.pull(image.manifest_digest, _resolver(tmp_path / "served", image.blobs))
    uncapped = ImageStore(tmpfs / "images", BlobStore(tmpfs / "blobs"))
    assert uncapped.pull(image.manifest_digest, _resolver(tmp_path / "served", image.blobs)).layers

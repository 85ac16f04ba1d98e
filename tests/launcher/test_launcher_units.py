"""The launcher's pure parts and file-level adapters, without root or runc."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import os
import sqlite3
import stat
import tarfile
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from oci_fixture import BlobServer, build_image, sha256

from aos_sm.agent.errors import InvalidArgument, InvalidChecksum
from aos_sm.agent.launcher.blobs import BlobStore
from aos_sm.agent.launcher.bundle import BundleSpec, build_runtime_spec
from aos_sm.agent.launcher.gc import collect_garbage
from aos_sm.agent.launcher.image import ImageConfig, ImageStore
from aos_sm.agent.launcher.layers import OPAQUE_XATTR, unpack_layer
from aos_sm.agent.launcher.plan import info_fingerprint, plan_update
from aos_sm.agent.launcher.store import LauncherStore
from aos_sm.agent.ports import CrashRecord, InstanceKey
from aos_sm.proto.common.v2 import common_pb2
from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2


def ident(name: str) -> common_pb2.InstanceIdent:
    return common_pb2.InstanceIdent(item_id=name, subject_id="s", instance=0)


def info(name: str, version: str = "1") -> sm_pb2.InstanceInfo:
    return sm_pb2.InstanceInfo(instance=ident(name), version=version)


# --- plan


def test_plan_stops_first_restarts_changed_and_keeps_unchanged_running_instances() -> None:
    current = {InstanceKey("a", "s", 0): (info_fingerprint(info("a")), True),
               InstanceKey("b", "s", 0): (info_fingerprint(info("b")), True),
               InstanceKey("c", "s", 0): (info_fingerprint(info("c")), False),
               InstanceKey("d", "s", 0): (info_fingerprint(info("d")), True)}
    plan = plan_update(current, [ident("d"), ident("x")], [info("a"), info("b", "2"), info("c"), info("n")])
    assert plan.stop == (InstanceKey("d", "s", 0), InstanceKey("x", "s", 0))
    assert plan.keep == (InstanceKey("a", "s", 0),)
    assert plan.restart == (InstanceKey("b", "s", 0), InstanceKey("c", "s", 0))
    assert [i.instance.item_id for i in plan.start] == ["b", "c", "n"]


def test_plan_an_instance_in_both_lists_is_restarted_even_when_unchanged() -> None:
    current = {InstanceKey("a", "s", 0): (info_fingerprint(info("a")), True)}
    plan = plan_update(current, [ident("a")], [info("a")])
    assert (plan.stop, plan.keep, plan.restart) == ((), (), (InstanceKey("a", "s", 0),))


# --- bundle


def test_bundle_spec_from_image_config_and_instance_info() -> None:
    image = ImageConfig(("/bin/app",), ("--serve",), ("A=image", "B=image"), "work", ())
    spec = build_runtime_spec(image, BundleSpec(
        rootfs="/r", hostname="h", cgroups_path="/aos/x", uid=5, gid=6, env_vars=(("B", "cm"),), priority=5000,
        storage_path="/data/st", state_path="/data/state", host_binds=("/etc/ssl",)))
    process = spec["process"]
    assert process["args"] == ["/bin/app", "--serve"] and process["cwd"] == "/work"
    assert process["user"] == {"uid": 5, "gid": 6}
    assert process["env"][0].startswith("PATH=") and process["env"][-2:] == ["A=image", "B=cm"]
    assert process["oomScoreAdj"] == -999
    assert spec["root"] == {"path": "/r", "readonly": True}
    assert spec["linux"]["cgroupsPath"] == "/aos/x"
    binds = {m["destination"]: m["source"] for m in spec["mounts"] if m["type"] == "bind"}
    assert binds == {"/storage": "/data/st", "/state.dat": "/data/state", "/etc/ssl": "/etc/ssl"}
    assert next(m for m in spec["mounts"] if m["destination"] == "/etc/ssl")["options"][-1] == "ro"
    with pytest.raises(InvalidArgument):
        build_runtime_spec(ImageConfig((), (), (), "/", ()), BundleSpec("/r", "h", "/x", 0, 0))


# --- layers


def _tar(entries: List[tarfile.TarInfo], data: Optional[Dict[str, bytes]] = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for entry in entries:
            content = (data or {}).get(entry.name, b"")
            entry.size = len(content) if entry.isreg() else 0
            archive.addfile(entry, io.BytesIO(content) if entry.isreg() else None)
    return buffer.getvalue()


def _entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", mode: int = 0o644) -> tarfile.TarInfo:
    entry = tarfile.TarInfo(name)
    entry.type, entry.linkname, entry.mode = kind, link, mode
    return entry


def _apply(tmp_path: Path, rootfs: Path, layer: bytes, compress: bool = True) -> None:
    blob = tmp_path / hashlib.sha256(layer).hexdigest()
    blob.write_bytes(gzip.compress(layer) if compress else layer)
    unpack_layer(blob, rootfs, sha256(layer))


@pytest.mark.skipif(os.geteuid() != 0, reason="overlay whiteouts need CAP_MKNOD and trusted.* xattrs CAP_SYS_ADMIN")
def test_a_layer_unpacks_into_overlay_form_with_whiteouts_and_opaque_directories(tmp_path: Path) -> None:
    layer = tmp_path / "layer"
    layer.mkdir()
    _apply(tmp_path, layer, _tar(
        [_entry("etc", tarfile.DIRTYPE, mode=0o755), _entry("etc/a"), _entry("etc/.wh.b"), _entry("gone/.wh.x"),
         _entry("opt", tarfile.DIRTYPE, mode=0o755), _entry("opt/.wh..wh..opq"), _entry("opt/new"),
         _entry("etc/hard", tarfile.LNKTYPE, "etc/a"), _entry("etc/link", tarfile.SYMTYPE, "a")],
        {"etc/a": b"A", "opt/new": b"new"}), compress=False)
    for whiteout in (layer / "etc/b", layer / "gone/x"):
        info = os.lstat(whiteout)
        assert stat.S_ISCHR(info.st_mode) and info.st_rdev == os.makedev(0, 0), whiteout
    assert sorted(p.name for p in (layer / "etc").iterdir()) == ["a", "b", "hard", "link"]
    assert os.getxattr(layer / "opt", OPAQUE_XATTR) == b"y"
    assert [p.name for p in (layer / "opt").iterdir()] == ["new"]  # the marker itself is not a file
    with pytest.raises(OSError):
        os.getxattr(layer / "etc", OPAQUE_XATTR)
    assert (layer / "etc/hard").read_bytes() == b"A" and os.readlink(layer / "etc/link") == "a"


def test_symlinks_in_paths_are_followed_inside_the_layer_only(tmp_path: Path) -> None:
    layer = tmp_path / "layer"
    layer.mkdir()
    # Merged-/usr images: /lib -> /usr/lib (absolute); entries after it write through it.
    _apply(tmp_path, layer, _tar([_entry("lib", tarfile.SYMTYPE, "/usr/lib"), _entry("up", tarfile.SYMTYPE, "../../.."),
                                  _entry("lib/libc.so"), _entry("up/escape")], {"lib/libc.so": b"c"}))
    assert (layer / "usr/lib/libc.so").read_bytes() == b"c"
    assert (layer / "escape").exists() and not (tmp_path / "escape").exists()


@pytest.mark.parametrize("entries", [
    [_entry("../escape")],
    [_entry("/../../escape")],
    [_entry("hard", tarfile.LNKTYPE, "../../etc/passwd")],
], ids=["dotdot", "absolute-dotdot", "hardlink-out"])
def test_entries_that_leave_the_rootfs_are_refused(tmp_path: Path, entries: List[tarfile.TarInfo]) -> None:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    with pytest.raises(InvalidArgument):
        _apply(tmp_path, rootfs, _tar(entries))
    assert not (tmp_path / "escape").exists()


def test_a_layer_whose_content_differs_from_its_diff_id_is_refused(tmp_path: Path) -> None:
    layer = _tar([_entry("f")])
    blob = tmp_path / "layer"
    blob.write_bytes(layer)
    (tmp_path / "rootfs").mkdir()
    with pytest.raises(InvalidChecksum):
        unpack_layer(blob, tmp_path / "rootfs", sha256(b"something else"))


# --- blobs and images


def test_blobs_are_verified_and_a_wrong_one_leaves_nothing(tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    (served / "blob").write_bytes(b"content")
    store = BlobStore(tmp_path / "store")
    url = (served / "blob").as_uri()
    assert store.fetch(sha256(b"content"), url, 7).read_bytes() == b"content"
    with pytest.raises(InvalidChecksum):
        store.fetch(sha256(b"other"), url)
    with pytest.raises(InvalidChecksum):
        store.fetch(sha256(b"content2"), url, 8)
    assert store.digests() == [sha256(b"content")]
    assert list((tmp_path / "store" / "partial").iterdir()) == []


def test_an_interrupted_download_is_restarted_when_the_server_cannot_resume(tmp_path: Path) -> None:
    server = BlobServer(tmp_path / "served")
    try:
        data = b"x" * 100000
        (tmp_path / "served" / "blob").write_bytes(data)
        store = BlobStore(tmp_path / "store")
        digest = sha256(data)
        (tmp_path / "store" / "partial" / digest.split(":")[1]).write_bytes(b"garbage-from-before")
        assert store.fetch(digest, server.url(digest).rsplit("/", 1)[0] + "/blob", len(data)).read_bytes() == data
    finally:
        server.close()


def test_image_pull_unpacks_once_and_gc_removes_unused_images_after_the_ttl(tmp_path: Path) -> None:
    layer = _tar([_entry("bin", tarfile.DIRTYPE, mode=0o755), _entry("bin/app", mode=0o755)], {"bin/app": b"#!"})
    image = build_image([layer], cmd=["/bin/app"])
    served = tmp_path / "served"
    served.mkdir()
    for digest, blob in image.blobs.items():
        (served / digest.split(":")[1]).write_bytes(blob)
    asked: List[List[str]] = []

    def resolve(digests: List[str]) -> List[str]:
        asked.append(digests)
        return [(served / d.split(":")[1]).as_uri() for d in digests]

    images = ImageStore(tmp_path / "images", BlobStore(tmp_path / "blobs"), clock=lambda: 900.0)
    pulled = images.pull(image.manifest_digest, resolve)
    (layer_dir,) = pulled.layers
    assert (layer_dir / "bin/app").read_bytes() == b"#!" and pulled.config.cmd == ("/bin/app",)
    assert images.pull(image.manifest_digest, resolve).layers == pulled.layers
    assert len(asked) == 3  # manifest, config, layers; nothing the second time
    assert image.layer_digests[0] not in images.blobs.digests()  # the packed layer went once unpacked

    store = LauncherStore(tmp_path / "launcher.db")
    store.touch_image(image.manifest_digest, 1000.0)
    collect_garbage(store, images, {image.manifest_digest}, 10**6, ttl=60)
    assert images.installed() == [image.manifest_digest]  # in use: kept whatever its age
    collect_garbage(store, images, set(), 1059.0, ttl=60)
    assert images.installed() == [image.manifest_digest]  # unused, but not for long enough
    collect_garbage(store, images, set(), 1060.0, ttl=60)
    assert images.installed() == [] and images.blobs.digests() == [] and images.layers() == []
    assert list((tmp_path / "images" / "layers").iterdir()) == []


# --- store


def test_the_store_keeps_instances_and_crashes_across_reopens(tmp_path: Path) -> None:
    path = tmp_path / "launcher.db"
    store = LauncherStore(path)
    key = InstanceKey("a", "s", 0)
    store.put_instance(key, info("a"), "c1")
    now = datetime.now(timezone.utc)
    store.add_crash(CrashRecord(key, tmp_path / "a.log", now - timedelta(seconds=5), now, "exited with code 3"))
    store.close()
    again = LauncherStore(path)
    assert again.problem is None
    assert {k: (i.instance.item_id, c) for k, (i, c) in again.instances().items()} == {key: ("a", "c1")}
    (crash,) = again.crashes()
    assert (crash.key, crash.crashed_at, crash.reason) == (key, now, "exited with code 3")


def test_a_corrupt_store_is_moved_aside_with_a_problem_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "launcher.db"
    path.write_bytes(b"this is not a database" * 100)
    store = LauncherStore(path)
    assert store.problem is not None and "unreadable" in store.problem
    assert store.instances() == {}
    assert [p.name.startswith("launcher.db.corrupt-") for p in tmp_path.iterdir()].count(True) == 1
    with pytest.raises(sqlite3.DatabaseError):
        sqlite3.connect(str(next(tmp_path.glob("launcher.db.corrupt-*")))).execute("SELECT 1 FROM instances")


def test_a_runtime_command_that_hangs_is_killed_at_its_deadline(tmp_path: Path) -> None:
    from aos_sm.agent.launcher.runtime import OciRuntime, OciRuntimeError

    hanging = tmp_path / "hanging-runtime"
    hanging.write_text("#!/bin/sh\nexec sleep 30\n")
    hanging.chmod(0o755)
    runtime = OciRuntime(str(hanging), tmp_path / "state", timeout=0.3)
    with pytest.raises(OciRuntimeError, match="killed"):
        runtime.state("anything")


def test_a_damaged_instance_row_is_skipped_not_fatal(tmp_path: Path) -> None:
    store = LauncherStore(tmp_path / "launcher.db")
    store.put_instance(InstanceKey("good", "s", 0), info("good"), "c1")
    with sqlite3.connect(str(tmp_path / "launcher.db")) as db:
        db.execute("INSERT INTO instances VALUES ('bad', 's', 0, 0, x'ffffffff', 'c2')")
    assert [key.item_id for key in store.instances()] == ["good"]


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves one blob and honours ``Range: bytes=N-`` (as registries and CDNs do)."""

    blob = b""
    ranges: List[Optional[str]] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        requested = self.headers.get("Range")
        type(self).ranges.append(requested)
        start = int(requested.split("=")[1].rstrip("-")) if requested else 0
        body = self.blob[start:]
        self.send_response(206 if requested else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_an_interrupted_download_resumes_where_the_server_allows_it(tmp_path: Path) -> None:
    data = bytes(range(256)) * 400
    _RangeHandler.blob, _RangeHandler.ranges = data, []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        store = BlobStore(tmp_path / "store")
        digest = sha256(data)
        # What an earlier, interrupted download left behind.
        (tmp_path / "store" / "partial" / digest.split(":")[1]).write_bytes(data[:30000])
        url = f"http://127.0.0.1:{server.server_address[1]}/blob"
        assert store.fetch(digest, url, len(data)).read_bytes() == data
        assert _RangeHandler.ranges == ["bytes=30000-"]
    finally:
        server.shutdown()
        server.server_close()


def test_runc_created_times_parse_with_nanoseconds_and_zones() -> None:
    from aos_sm.agent.launcher.runtime import parse_created

    assert parse_created("2026-11-25T10:45:00.123456789Z") == datetime(2026, 11, 25, 10, 45, 0, 123456, timezone.utc)
    assert parse_created("2026-11-25T12:45:00+02:00") == datetime(2026, 11, 25, 10, 45, 0, 0, timezone.utc)
    assert parse_created("yesterday") is None and parse_created(None) is None

"""Real OCI images for the launcher tests, built from Debian's static busybox, and an HTTP
server on 127.0.0.1 that serves their blobs the way a CM's blob URLs do."""

from __future__ import annotations

import functools
import http.server
import io
import json
import os
import shutil
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

from aos_sm.agent.demo_image import build_image as build_blobs
from aos_sm.agent.demo_image import script_layer, sha256  # noqa: F401  (the tests import them from here)

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
APPLETS = ("sh", "sleep", "id", "cat", "env", "echo", "true", "ls")


def static_busybox() -> Optional[Path]:
    """Debian's busybox-static binary, or None (a dynamic busybox cannot run in a bare rootfs)."""
    for candidate in BUSYBOX_CANDIDATES:
        path = Path(candidate)
        if path.is_file():
            head = path.read_bytes()[:16384]
            if b"ld-linux" not in head and b"ld-musl" not in head:
                return path
    return None


def _add(archive: tarfile.TarFile, name: str, *, kind: bytes = tarfile.DIRTYPE, data: bytes = b"",
         mode: int = 0o755, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.size = kind, mode, link, len(data)
    archive.addfile(info, io.BytesIO(data) if data else None)


def busybox_layer(busybox: Path) -> bytes:
    """An uncompressed layer tar: /bin/busybox, applet symlinks and the usual mount points."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for directory in ("bin", "proc", "dev", "sys", "tmp", "etc", "storage"):
            _add(archive, directory)
        _add(archive, "bin/busybox", kind=tarfile.REGTYPE, data=busybox.read_bytes())
        for applet in APPLETS:
            _add(archive, f"bin/{applet}", kind=tarfile.SYMTYPE, link="busybox", mode=0o777)
        _add(archive, "etc/hello", kind=tarfile.REGTYPE, data=b"hello from the image\n", mode=0o644)
    return buffer.getvalue()


@dataclass(frozen=True)
class TestImage:
    manifest_digest: str
    blobs: Dict[str, bytes]  # digest -> bytes (manifest, config, layers)

    @property
    def layer_digests(self) -> List[str]:
        manifest = json.loads(self.blobs[self.manifest_digest])
        return [layer["digest"] for layer in manifest["layers"]]


def build_image(layers: Sequence[bytes], *, entrypoint: Sequence[str] = (), cmd: Sequence[str] = (),
                env: Sequence[str] = (), working_dir: str = "/", item_config: Optional[object] = None,
                item_config_key: str = "aosItemConfig") -> TestImage:
    """An image of ``layers``, built by the agent's own builder (the demo's); the manifest is its
    last blob."""
    blobs = build_blobs(layers, entrypoint=entrypoint, cmd=cmd, env=env, working_dir=working_dir,
                        item_config=item_config, item_config_key=item_config_key)
    return TestImage(list(blobs)[-1], blobs)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class BlobServer:
    """Serves ``<directory>/<hex>`` at ``http://127.0.0.1:<port>/<hex>``; counts requests."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        handler = functools.partial(_QuietHandler, directory=str(directory))
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="blob-server", daemon=True)
        self._thread.start()

    def url(self, digest: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/{digest.split(':', 1)[1]}"

    def publish(self, image: TestImage, *, tamper: Optional[str] = None) -> Dict[str, str]:
        """Write the image's blobs (one of them corrupted if ``tamper`` names it); digest -> URL."""
        urls = {}
        for digest, data in image.blobs.items():
            if digest == tamper:
                data = data[:-1] + bytes([data[-1] ^ 0xFF])
            (self.directory / digest.split(":", 1)[1]).write_bytes(data)
            urls[digest] = self.url(digest)
        return urls

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def remove_cgroups(parent: str) -> None:
    """rmdir every cgroup under ``parent`` in every hierarchy (deepest first)."""
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        top = hierarchy / parent
        if not top.is_dir():
            continue
        for directory in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            try:
                directory.rmdir()
            except OSError:
                pass
        try:
            top.rmdir()
        except OSError:
            pass


def system_test_problem() -> Optional[str]:
    """Why this machine cannot run the launcher's system tests, or None."""
    if os.geteuid() != 0:
        return "runc needs root to create cgroups and namespaces"
    if shutil.which("runc") is None:
        return "runc is not installed (apt-get install runc)"
    if not Path("/sys/fs/cgroup").is_dir() or not any(Path("/sys/fs/cgroup").iterdir()):
        return "no cgroup hierarchy is mounted at /sys/fs/cgroup"
    if static_busybox() is None:
        return "no static busybox for the test image (apt-get install busybox-static)"
    return None


def iter_pids(cgroup_dir: Path) -> Iterator[int]:
    for line in (cgroup_dir / "cgroup.procs").read_text().split():
        yield int(line)

"""The tiny OCI image the demo and the CM simulator serve, built on the fly: no registry, no network.

One layer holding a shell script. The launcher's root filesystem keeps the host's ``bin``,
``sbin``, ``lib``, ``lib64`` and ``usr`` (config ``rootfsHostDirs``), so a script-only image runs
on the node's own ``/bin/sh``. The image is built in memory, deterministically (fixed mtimes,
gzip without a timestamp): the same host builds the same digest every time.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Union

# What the demo service prints: a greeting, then a tick a second until SIGTERM.
DEMO_SCRIPT = """\
echo "hello from the aos-sm demo service, running as uid $(id -u)"
trap 'echo "SIGTERM: the demo service stops"; exit 0' TERM
i=0
while true; do
  i=$((i + 1))
  echo "tick $i"
  sleep 1 &
  wait $!
done
"""
GREETING = "hello from the aos-sm demo service"
# A short start window: the launcher confirms `active` after 1.2 x startInterval (INSTANCES.md,
# "Running and watching"); the default 5 s would keep the demo waiting for 6 s.
DEMO_ITEM_CONFIG = {"runParameters": {"startInterval": "1s", "startBurst": 3, "restartInterval": "1s"}}
OCI_RUNTIMES = ("runc", "crun")

Blob = Union[bytes, Path]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ServedImage:
    """An image the simulator serves: its manifest digest and every blob, digest -> bytes or file."""

    manifest_digest: str
    blobs: Dict[str, Blob] = field(repr=False)
    description: str = ""


def script_layer(files: Dict[str, bytes]) -> bytes:
    """An uncompressed layer tar of ``files`` (a name ending in ``/`` is a directory), with fixed
    mtimes so the same files give the same diff id."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in files.items():
            entry = tarfile.TarInfo(name)
            entry.mtime = 0
            if name.endswith("/"):
                entry.type, entry.mode = tarfile.DIRTYPE, 0o755
                archive.addfile(entry)
            else:
                entry.size, entry.mode = len(data), 0o755
                archive.addfile(entry, io.BytesIO(data))
    return buffer.getvalue()


def build_image(layers: Sequence[bytes], *, entrypoint: Sequence[str] = (), cmd: Sequence[str] = (),
                env: Sequence[str] = (), working_dir: str = "/", architecture: str = "amd64",
                item_config: Optional[object] = None, item_config_key: str = "aosItemConfig") -> Dict[str, bytes]:
    """The blobs of an OCI image of uncompressed ``layers`` (gzipped here); the manifest is the
    last entry. ``item_config`` (a JSON value, or raw bytes) is named in the manifest under
    ``item_config_key``, as Aos images do. The launcher tests build their images with it too."""
    blobs: Dict[str, bytes] = {}
    descriptors = []
    for layer in layers:
        compressed = gzip.compress(layer, mtime=0)
        blobs[sha256(compressed)] = compressed
        descriptors.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                            "digest": sha256(compressed), "size": len(compressed)})
    config = json.dumps({
        "architecture": architecture, "os": "linux",
        "config": {"Entrypoint": list(entrypoint), "Cmd": list(cmd), "Env": list(env), "WorkingDir": working_dir},
        "rootfs": {"type": "layers", "diff_ids": [sha256(layer) for layer in layers]},
    }).encode()
    blobs[sha256(config)] = config
    manifest: Dict[str, object] = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(config),
                   "size": len(config)},
        "layers": descriptors,
    }
    if item_config is not None:
        item = item_config if isinstance(item_config, bytes) else json.dumps(item_config).encode()
        blobs[sha256(item)] = item
        manifest[item_config_key] = {"mediaType": "application/json", "digest": sha256(item), "size": len(item)}
    data = json.dumps(manifest).encode()
    blobs[sha256(data)] = data
    return blobs


def demo_image(architecture: str = "amd64") -> ServedImage:
    """The demo service: ``/app/run.sh`` run by the node's ``/bin/sh``."""
    blobs = build_image([script_layer({"app/": b"", "app/run.sh": DEMO_SCRIPT.encode()})],
                        entrypoint=["/bin/sh", "/app/run.sh"], architecture=architecture,
                        item_config=DEMO_ITEM_CONFIG)
    manifest = list(blobs)[-1]
    return ServedImage(manifest, dict(blobs), "the built-in demo image (a shell script run by the node's /bin/sh)")


Which = Callable[[str], Optional[str]]


def real_service_problem(*, which: Which = shutil.which, euid: Optional[int] = None,
                         cgroup_root: Path = Path("/sys/fs/cgroup"), shell: Path = Path("/bin/sh")) -> Optional[str]:
    """Why this machine cannot run the demo image as a real instance, with what to do; or None."""
    if (os.geteuid() if euid is None else euid) != 0:
        return "running instances needs root (runc creates cgroups and namespaces): run it with sudo"
    if not any(which(name) for name in OCI_RUNTIMES):
        return "no OCI runtime on PATH: install runc (apt-get install runc)"
    if not cgroup_root.is_dir() or not any(cgroup_root.iterdir()):
        return f"no cgroup hierarchy is mounted at {cgroup_root} (mount cgroup2 there)"
    if not shell.exists():
        return f"the demo image is a shell script and this host has no {shell}"
    return None


def host_architecture() -> str:
    """This machine's architecture in GOARCH terms (what SMInfo and image configs say)."""
    import platform

    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm", "i686": "386"}.get(machine, machine)

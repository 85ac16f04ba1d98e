"""Instances' root filesystems with runc on this machine: the overlay of the instance's top layer,
its image layers and the kept host directories; storage and state; mounts cleaned on stop and at
agent start. Each test runs with the working dir on the root filesystem (where the image layers
and the host's ``/usr`` share a filesystem, which a plain overlay over ``/`` cannot do) and on a
tmpfs of its own."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import pytest

from launcher_helpers import RUNC_ID, RecordingSender, quick_item_config, remove_containers, wait_until
from oci_fixture import build_image, script_layer
from test_launcher_runc import info, resolver_for

from aos_sm.agent.errors import AosCode
from aos_sm.agent.launcher.containers import Containers
from aos_sm.agent.launcher.image import Image, ImageConfig
from aos_sm.agent.launcher.mounts import RootfsError, mount_rootfs, remove_rootfs
from aos_sm.agent.launcher.records import Instance
from aos_sm.agent.launcher.rootfs import EtcFiles, Entry, HostEntry, plan_rootfs
from aos_sm.agent.launcher.store import LauncherStore
from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

pytestmark = [pytest.mark.system, pytest.mark.usefixtures("system")]

KEPT = ("bin", "sbin", "lib", "lib64", "usr")
# Printed by the shell-only image: what of the host the container sees.
PROBED = ("/etc/shadow", "/root", "/home", "/var", "/etc/ssl", "/etc/passwd", "/work", "/opt")
REPORT = ("for p in " + " ".join(PROBED) + "; do if [ -e $p ]; then echo seen $p; else echo hidden $p; fi; done; "
          "echo top: $(ls -A / | tr '\\n' ' '); echo etc: $(ls -A /etc | tr '\\n' ' '); echo done; ")


@pytest.fixture(params=["rootfs", "tmpfs"])
def work_fs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The working dir's filesystem: the machine's root filesystem, or a tmpfs mounted here."""
    if request.param == "tmpfs":
        work = tmp_path / "work"
        work.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "aos-sm-test", str(work)], check=True)
        yield "tmpfs"
        subprocess.run(["umount", "-l", str(work)], check=False)
    else:
        yield "rootfs"


def mounts_under(path: Path) -> List[str]:
    """Mount points below ``path`` in this process's mount table (not ``path`` itself: the roots'
    tmpfs stays for the agent's life)."""
    prefix = str(path) + "/"
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [p for p in points if p.startswith(prefix)]


def output_of(launcher, name: str) -> str:  # type: ignore[no-untyped-def]
    (log_file,) = [f for f in launcher.instance_logs() if f.key.item_id == name]
    wait_until(lambda: log_file.path.exists() and b"done" in log_file.path.read_bytes(), what="the report")
    return log_file.path.read_bytes().decode(errors="replace")


def test_a_shell_script_image_runs_on_the_host_shell_and_sees_only_the_kept_host_dirs(
    work_fs: str, make_launcher, blob_server, tmp_path: Path
) -> None:
    image = build_image([script_layer({"app/": b"", "app/run.sh": (REPORT + "exec sleep 1000\n").encode()})],
                        entrypoint=["/bin/sh", "/app/run.sh"], item_config=quick_item_config())
    sender = RecordingSender()
    launcher = make_launcher(sender, resolver_for(blob_server.publish(image)))
    launcher.start()
    launcher.update_instances(sm_pb2.UpdateInstances(start_instances=[
        info(image.manifest_digest, "shell", uid=1000, gid=1000)]))
    sender.wait(lambda s: len(s.of_kind("node_instances_status")) == 1)
    assert [s.state for s in sender.statuses()] == ["activating", "active"], sender.statuses()
    text = output_of(launcher, "shell")
    for hidden in ("/etc/shadow", "/root", "/home", "/var", "/etc/passwd", "/work", "/opt"):
        assert f"hidden {hidden}" in text, text
    assert "seen /etc/ssl" in text, text
    top = next(line for line in text.splitlines() if "top:" in line).split("top:")[1].split()
    host_kept = {name for name in KEPT if os.path.lexists(f"/{name}")}
    assert set(top) == {"app", "proc", "dev", "sys", "tmp", "etc"} | host_kept, text
    etc = next(line for line in text.splitlines() if "etc:" in line).split("etc:")[1].split()
    assert set(etc) == {"hosts", "resolv.conf"} | {n for n in ("ssl", "nsswitch.conf") if os.path.exists(f"/etc/{n}")}
    # The root and the host's /usr are mounted for the instance (the overlay and its kept directory).
    assert len(mounts_under(tmp_path / "work" / "launcher" / "rootfs")) >= 2


def test_storage_and_state_are_the_instances_and_an_escaping_path_writes_nothing(
    work_fs: str, make_launcher, blob_server, tmp_path: Path
) -> None:
    writer = "echo data > /storage/x && echo state > /state.dat && echo done; exec sleep 1000\n"
    image = build_image([script_layer({"run.sh": writer.encode()})], entrypoint=["/bin/sh", "/run.sh"],
                        item_config=quick_item_config())
    sender = RecordingSender()
    launcher = make_launcher(sender, resolver_for(blob_server.publish(image)))
    launcher.start()
    launcher.update_instances(sm_pb2.UpdateInstances(start_instances=[
        info(image.manifest_digest, "writer", uid=1000, gid=1000, storage_path="writer/s/0",
             state_path="writer/s/0/state.dat")]))
    sender.wait(lambda s: len(s.of_kind("node_instances_status")) == 1)
    output_of(launcher, "writer")
    storage = tmp_path / "work" / "storages" / "writer" / "s" / "0"
    state = tmp_path / "work" / "states" / "writer" / "s" / "0" / "state.dat"
    assert (storage / "x").read_text() == "data\n" and state.read_text() == "state\n"
    for path in (storage, storage / "x", state):
        assert (path.stat().st_uid, path.stat().st_gid) == (1000, 1000), path

    before = sorted(str(p) for p in (tmp_path / "work").rglob("*") if "launcher" not in p.parts)
    etc_before = sorted(os.listdir("/etc"))
    launcher.update_instances(sm_pb2.UpdateInstances(start_instances=[
        info(image.manifest_digest, "escape", uid=1000, gid=1000, storage_path="../../etc",
             state_path="escape/s/0/state.dat")]))
    sender.wait(lambda s: len(s.of_kind("node_instances_status")) == 2)
    failed = [s for s in sender.statuses() if s.instance.item_id == "escape"][-1]
    assert (failed.state, failed.error.aos_code) == ("failed", AosCode.INVALID_ARGUMENT), failed
    assert failed.error.message.startswith("storage_path"), failed.error.message
    assert sorted(str(p) for p in (tmp_path / "work").rglob("*") if "launcher" not in p.parts) == before
    assert sorted(os.listdir("/etc")) == etc_before


def test_overlays_are_removed_on_stop_and_strays_at_agent_start_while_adopted_ones_stay(
    work_fs: str, make_launcher, blob_server, tmp_path: Path
) -> None:
    image = build_image([script_layer({"run.sh": b"echo done; exec sleep 1000\n"})], entrypoint=["/bin/sh", "/run.sh"],
                        item_config=quick_item_config())
    urls = blob_server.publish(image)
    roots = tmp_path / "work" / "launcher" / "rootfs"
    sender = RecordingSender()
    first = make_launcher(sender, resolver_for(urls))
    first.start()
    kept, stopped = info(image.manifest_digest, "kept"), info(image.manifest_digest, "stopped")
    first.update_instances(sm_pb2.UpdateInstances(start_instances=[kept, stopped]))
    sender.wait(lambda s: len(s.of_kind("node_instances_status")) == 1)
    per_instance = len(mounts_under(roots)) // 2
    assert per_instance >= 2 and len(os.listdir(roots)) == 2
    first.update_instances(sm_pb2.UpdateInstances(stop_instances=[stopped.instance]))
    sender.wait(lambda s: len(s.of_kind("node_instances_status")) == 2)
    assert len(mounts_under(roots)) == per_instance and len(os.listdir(roots)) == 1
    (kept_root,) = roots.iterdir()

    # The agent stops (instances keep running) and a stray root appears: a copy of the kept one's,
    # as an agent that died between a container's removal and its root's would leave.
    first.stop()
    stray = roots / "aos-sm-stray"
    (stray / "mnt").mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(kept_root / "mnt"), str(stray / "mnt")], check=True)
    assert len(mounts_under(roots)) > per_instance

    second = make_launcher(RecordingSender(), resolver_for(urls))
    second.start()
    assert mounts_under(stray) == [] and not stray.exists()
    assert len(mounts_under(roots)) == per_instance and kept_root.is_dir()
    second.stop_all_instances()
    assert mounts_under(roots) == [] and os.listdir(roots) == []
    # With nothing left running, stopping releases the roots' tmpfs too (the first stop, with the
    # kept instance running, had to keep it), so the working directory can simply be removed.
    assert os.path.ismount(roots)
    second.stop()
    assert not os.path.ismount(roots)


# --- a two-layer image in overlay format (what the per-layer unpacker produces) -----------------------

LAYER_1 = {"data/a": b"1a", "data/b": b"1b", "data/keep": b"1keep", "data/dir/x": b"1x", "data/gone/z": b"1z"}
LAYER_2 = {"data/a": b"2a", "data/.wh.b": None, "data/dir/.wh..wh..opq": None, "data/dir/y": b"2y",
           "data/.wh.gone": None, "data/new": b"2new"}


def overlay_dir(root: Path, files: Dict[str, Optional[bytes]]) -> Path:
    """The layer as overlayfs reads it: whiteouts as char devices 0:0, opaque dirs by xattr."""
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.name == ".wh..wh..opq":
            os.setxattr(path.parent, "trusted.overlay.opaque", b"y")
        elif path.name.startswith(".wh."):
            os.mknod(path.with_name(path.name[4:]), 0o600 | 0o020000, os.makedev(0, 0))
        else:
            path.write_bytes(data or b"")
    return root


def oci_merge(*layers: Dict[str, Optional[bytes]]) -> List[Tuple[str, str]]:
    """OCI image-spec's layer merge, written out from the spec (not through the unpacker under
    test): ``.wh.<name>`` deletes name and all below it, ``.wh..wh..opq`` empties its directory of
    what lower layers put there; directories appear for every file's parents."""
    files: Dict[str, bytes] = {}
    for layer in layers:
        for name, data in layer.items():
            parent, _, base = name.rpartition("/")
            if base == ".wh..wh..opq":
                files = {k: v for k, v in files.items() if not k.startswith(parent + "/")}
            elif base.startswith(".wh."):
                gone = f"{parent}/{base[4:]}"
                files = {k: v for k, v in files.items() if k != gone and not k.startswith(gone + "/")}
        for name, data in layer.items():
            if not name.rpartition("/")[2].startswith(".wh."):
                files[name] = data or b""
    merged = {name: data.decode() for name, data in files.items()}
    for name in list(merged):
        parts = name.split("/")
        for depth in range(1, len(parts)):
            merged.setdefault("/".join(parts[:depth]), "dir")
    return sorted(merged.items())


def test_a_two_layer_image_shows_exactly_the_oci_merge(work_fs: str, tmp_path: Path, cgroup_parent: str) -> None:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    layers = (overlay_dir(work / "l1", LAYER_1), overlay_dir(work / "l2", LAYER_2))
    lister = "cd /data && for f in $(find . | sort); do if [ -f $f ]; then echo $f=$(cat $f); else echo $f=dir; fi; done"
    fields: Dict[str, object] = dict(manifest_digest="sha256:" + "0" * 64, blobs=(), layers=layers,
                                     config=ImageConfig(("/bin/sh", "-c"), (lister,), (), "/", ()))
    image = Image(**fields)  # type: ignore[arg-type]
    containers = Containers(root=work / "launcher", runtimes={RUNC_ID: ("runc", "runc")},
                            store=LauncherStore(work / "store.db"), cgroup_parent=cgroup_parent, stop_timeout=5.0,
                            clock=time.time)
    instance = Instance(info(image.manifest_digest, "merge"), f"{cgroup_parent}-merge")
    try:
        reader, _ = containers.create(instance, image)
        with os.fdopen(reader, "rb") as output:
            seen = output.read().decode()
        containers.halt(instance, None)
        assert mounts_under(work / "launcher" / "rootfs") == []
    finally:
        remove_containers(work / "launcher" / "runtime" / "runc")
    got = sorted(tuple(line[2:].split("=", 1)) for line in seen.splitlines() if line.startswith("./"))
    want = [(name[len("data/"):], data) for name, data in oci_merge(LAYER_1, LAYER_2) if name.startswith("data/")]
    assert got == want, seen
    assert ("a", "2a") in got and not any(name in ("b", "gone", "dir/x") for name, _ in got)


def test_layers_whose_names_exceed_a_page_of_mount_options_still_mount(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 200) / ("e" * 200)
    layers = []
    for index in range(40):  # 40 x ~470 bytes of path: four times the kernel's 4096-byte option page
        layer = deep / f"{index:02d}{'l' * 60}"
        (layer / "data").mkdir(parents=True)
        (layer / "data" / f"from-{index:02d}").write_text(str(index))
        (layer / "data" / "top").write_text(str(index))
        layers.append(str(layer))
    assert len(":".join(layers)) > 4 * 4096
    plan = plan_rootfs(top=str(tmp_path / "r" / "top"), host_layer=str(tmp_path / "r" / "host"), image_layers=layers,
                       probes=[{}] * len(layers), host=(), host_root="/", mounts=(), etc=EtcFiles("", ""))
    mnt = mount_rootfs(tmp_path / "r", plan)
    try:
        assert len(list((mnt / "data").iterdir())) == 41 and (mnt / "data" / "top").read_text() == "39"
    finally:
        remove_rootfs(tmp_path / "r")
    assert not (tmp_path / "r").exists() and mounts_under(tmp_path) == []


def test_the_network_managers_hosts_and_resolv_conf_are_what_the_instance_reads(make_launcher, blob_server) -> None:
    image = build_image([script_layer({"run.sh": b"cat /etc/hosts /etc/resolv.conf; echo done; exec sleep 1000\n"})],
                        entrypoint=["/bin/sh", "/run.sh"], item_config=quick_item_config(hostname="named"))
    asked: List[Tuple[str, str]] = []

    def etc_files(instance: sm_pb2.InstanceInfo, hostname: str) -> EtcFiles:
        asked.append((instance.instance.item_id, hostname))
        return EtcFiles("10.0.0.5\tnet-id named\n", "nameserver 10.0.0.1\n")

    sender = RecordingSender()
    launcher = make_launcher(sender, resolver_for(blob_server.publish(image)), etc_files=etc_files)
    launcher.start()
    launcher.update_instances(sm_pb2.UpdateInstances(start_instances=[info(image.manifest_digest, "etc")]))
    sender.wait(lambda s: len(s.of_kind("node_instances_status")) == 1)
    stamped = output_of(launcher, "etc")
    assert "10.0.0.5\tnet-id named" in stamped and "nameserver 10.0.0.1" in stamped
    assert asked == [("etc", "named")]


def test_a_working_dir_inside_a_kept_host_directory_fails_saying_why(tmp_path: Path) -> None:
    host = tmp_path / "host"
    layer = host / "usr" / "local" / "aos" / "layer"  # the image store inside the host's /usr
    (layer / "usr" / "bin").mkdir(parents=True)
    plan = plan_rootfs(top=str(tmp_path / "r" / "top"), host_layer=str(tmp_path / "r" / "host"),
                       image_layers=[str(layer)], probes=[{"usr": Entry.DIR}], host=[HostEntry("usr", "dir")],
                       host_root=str(host), mounts=(), etc=EtcFiles("", ""))
    with pytest.raises(RootfsError, match="^overlayfs refused overlapping layers"):
        mount_rootfs(tmp_path / "r", plan)
    assert not (tmp_path / "r").exists() and mounts_under(tmp_path) == []

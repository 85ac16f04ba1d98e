"""The root filesystem plan (agent/launcher/rootfs.py): pure, no mounts."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Mapping, Sequence

from aos_sm.agent.launcher.rootfs import (EtcFiles, Entry, HostEntry, MountPoint, NestedMount, default_etc_files,
                                          plan_rootfs, plan_stubs)

ETC = EtcFiles("127.0.0.1 localhost\n", "nameserver 10.0.0.1\n")
MERGED_USR_HOST = (HostEntry("bin", "symlink", "usr/bin"), HostEntry("lib", "symlink", "usr/lib"),
                   HostEntry("usr", "dir"))


def plan(layers: Sequence[Mapping[str, Entry]] = (), host: Sequence[HostEntry] = MERGED_USR_HOST,
         mounts: Sequence[MountPoint] = ()):  # type: ignore[no-untyped-def]
    return plan_rootfs(top="/r/top", host_layer="/r/host", image_layers=[f"/l{i}" for i in range(len(layers))],
                       probes=list(layers), host=host, host_root="/", mounts=mounts, etc=ETC)


def test_lowers_are_top_then_image_layers_last_oci_layer_first_then_host() -> None:
    assert plan([{}, {}, {}]).lowers == ("/r/top", "/l2", "/l1", "/l0", "/r/host")


def test_stubs_for_uncovered_mount_points_and_the_etc_files() -> None:
    mounts = [MountPoint("/proc"), MountPoint("/dev"), MountPoint("/dev/pts"), MountPoint("/state.dat", True),
              MountPoint("/etc/ssl"), MountPoint("/etc/nsswitch.conf", True), MountPoint("/opt//data/")]
    stubs = {stub.path: (stub.is_file, stub.content) for stub in plan_stubs(mounts, ETC)}
    assert stubs == {
        "proc": (False, b""), "dev": (False, b""), "state.dat": (True, b""), "etc/ssl": (False, b""),
        "etc/nsswitch.conf": (True, b""), "opt/data": (False, b""),
        "etc/hosts": (True, ETC.hosts.encode()), "etc/resolv.conf": (True, ETC.resolv_conf.encode()),
    }


def test_a_host_directory_no_layer_has_is_bound_and_symlinks_come_from_the_host_layer() -> None:
    result = plan([{}])
    assert result.nested == (NestedMount("usr", ("/usr",)),)
    assert result.host == MERGED_USR_HOST


def test_image_directories_merge_over_the_host_directory_in_layer_order() -> None:
    result = plan([{"usr": Entry.DIR}, {}, {"usr": Entry.DIR}])
    assert result.nested == (NestedMount("usr", ("/l2/usr", "/l0/usr", "/usr")),)


def test_a_mount_point_under_a_kept_directory_puts_the_top_layer_in_its_stack() -> None:
    result = plan([{"usr": Entry.DIR}], mounts=[MountPoint("/usr/share/data")])
    assert result.nested == (NestedMount("usr", ("/r/top/usr", "/l0/usr", "/usr")),)


def test_a_mount_point_below_a_host_symlink_is_stubbed_where_the_link_leads() -> None:
    result = plan([{}], mounts=[MountPoint("/lib/modules"), MountPoint("/bin/tool", True)])
    stubs = {stub.path for stub in result.top}
    assert {"usr/lib/modules", "usr/bin/tool"} <= stubs and not any(s.startswith(("lib", "bin")) for s in stubs)
    assert result.nested == (NestedMount("usr", ("/r/top/usr", "/usr")),)
    # When an image layer has its own lib, the stub stays in it.
    assert "lib/modules" in {stub.path for stub in plan([{"lib": Entry.DIR}], mounts=[MountPoint("/lib/modules")]).top}


def test_whiteouts_opaque_directories_and_non_directories_hide_the_host_entry() -> None:
    assert plan([{"usr": Entry.DIR}, {"usr": Entry.WHITEOUT}]).nested == ()
    assert plan([{"usr": Entry.OPAQUE_DIR}]).nested == ()
    assert plan([{}, {"usr": Entry.DIR}, {"usr": Entry.OPAQUE_DIR}]).nested == ()
    assert plan([{"usr": Entry.OTHER}]).nested == ()
    # A symlink on top, and a directory above a symlink: the root overlay alone shows them.
    assert plan([{"usr": Entry.DIR}, {"usr": Entry.OTHER}]).nested == ()
    assert plan([{"usr": Entry.OTHER}, {"usr": Entry.DIR}]).nested == ()


def test_non_merged_hosts_get_one_mount_per_kept_directory_and_files_are_bound() -> None:
    host = (HostEntry("bin", "dir"), HostEntry("lib", "dir"), HostEntry("init", "file"))
    result = plan([{"bin": Entry.DIR}, {"init": Entry.DIR}], host=host)
    assert result.nested == (NestedMount("bin", ("/l0/bin", "/bin")), NestedMount("lib", ("/lib",)))


def test_default_etc_files_name_the_host_and_keep_the_host_resolvers() -> None:
    etc = default_etc_files("svc-1", "nameserver 9.9.9.9\n")
    assert "127.0.0.1\tlocalhost" in etc.hosts and "svc-1" in etc.hosts
    assert etc.resolv_conf == "nameserver 9.9.9.9\n"


def test_the_plan_module_does_no_io() -> None:
    tree = ast.parse(Path(__file__).parents[2].joinpath("agent/launcher/rootfs.py").read_text())
    imported: Dict[str, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update((alias.name, 1) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported[node.module] = 1
    assert not {"os", "ctypes", "subprocess", "shutil", "pathlib", "time", "threading"} & set(imported)

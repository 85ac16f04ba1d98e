"""This machine, read through the live root `/`; expectations come from files read here."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from aos_sm.hw import probe_node, used_ram


def _meminfo_kb(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(key)


def _debian_goarch() -> str:
    """The running machine's GOARCH from a source independent of uname: Debian's own architecture
    name (amd64, arm64 here and in the qemu-user arm64 suite), "" where dpkg is absent."""
    dpkg = shutil.which("dpkg")
    if dpkg is None:
        return ""
    name = subprocess.run([dpkg, "--print-architecture"], capture_output=True, text=True, check=True).stdout.strip()
    return {"armhf": "arm", "armel": "arm", "i386": "386"}.get(name, name)


def test_the_architecture_is_the_goarch_name_of_the_running_machine() -> None:
    expected = _debian_goarch()
    if not expected:
        pytest.skip("no dpkg: no independent source of this machine's GOARCH")
    node = probe_node()
    assert node.architecture == expected
    assert node.architecture in ("amd64", "arm64", "arm", "386", "riscv64")
    assert node.architecture != os.uname().machine or node.architecture == "riscv64"


def test_live_node_capacity() -> None:
    node = probe_node()
    assert node.max_dmips > 0 and node.allowed_dmips > 0
    assert node.total_ram == _meminfo_kb("MemTotal") * 1024
    assert node.machine == os.uname().machine
    assert node.architecture == _debian_goarch() or _debian_goarch() == ""
    assert node.os_version == os.uname().release
    processors = [l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("processor")]
    assert len(node.cpus) == len(processors)


def test_live_cgroup_layout_matches_mountinfo() -> None:
    fs_types = {line.split(" - ")[1].split()[0] for line in Path("/proc/self/mountinfo").read_text().splitlines()}
    has_v1, has_v2 = "cgroup" in fs_types, "cgroup2" in fs_types
    expected = "hybrid" if has_v1 and has_v2 else "v1" if has_v1 else "v2" if has_v2 else "none"
    node = probe_node()
    assert node.cgroups.mode == expected
    if expected != "none":
        assert f"cgroup-{expected}" in node.os_features


def test_live_used_ram_is_within_total() -> None:
    used = used_ram()
    assert 0 < used <= _meminfo_kb("MemTotal") * 1024

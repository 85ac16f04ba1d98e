"""The text parsers, one kernel format at a time."""

from __future__ import annotations

from aos_sm.hw.cgroup_limits import parse_cpu_max, parse_memory_max
from aos_sm.hw.cgroups import parse_mountinfo, parse_proc_cgroup
from aos_sm.hw.cpuinfo import parse_cpuinfo
from aos_sm.hw.memory import parse_meminfo, used_ram_from
from aos_sm.hw.osinfo import arch_variant, goarch
from aos_sm.hw._read import parse_cpu_list

import pytest


def test_cpuinfo_arm64_blocks_and_trailer() -> None:
    text = (
        "processor\t: 0\nBogoMIPS\t: 48.00\nCPU implementer\t: 0x41\nCPU architecture: 8\n"
        "CPU variant\t: 0x0\nCPU part\t: 0xd03\nCPU revision\t: 4\n\n"
        "processor\t: 1\nBogoMIPS\t: 48.00\nCPU implementer\t: 0x41\nCPU part\t: 0xd08\n\n"
        "Hardware\t: BCM2835\nRevision\t: a02082\n"
    )
    entries = parse_cpuinfo(text)
    assert [(e.processor, e.implementer, e.part) for e in entries] == [(0, 0x41, 0xD03), (1, 0x41, 0xD08)]
    assert entries[0].revision == 4 and entries[0].bogomips == 48.0 and entries[0].cpu_mhz is None


def test_cpuinfo_x86_fields() -> None:
    text = "processor\t: 3\nmodel name\t: AMD EPYC\ncpu MHz\t\t: 2596.150\nsiblings\t: 2\ncpu cores\t: 2\nbogomips\t: 5192.30\n"
    (entry,) = parse_cpuinfo(text)
    assert (entry.processor, entry.model_name, entry.cpu_mhz, entry.siblings, entry.cpu_cores) == (
        3, "AMD EPYC", 2596.15, 2, 2)


def test_cpuinfo_garbage_values_become_none() -> None:
    (entry,) = parse_cpuinfo("processor : 0\nCPU part : ???\ncpu MHz : fast\n")
    assert entry.part is None and entry.cpu_mhz is None
    assert parse_cpuinfo("no colon here\n\n:::\n") == ()


def test_meminfo_in_bytes_and_used_formula() -> None:
    meminfo = parse_meminfo(
        "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 200 kB\nSReclaimable: 30 kB\n"
        "HugePages_Total: 0\nbroken line\n"
    )
    assert meminfo["MemTotal"] == 1000 * 1024
    assert meminfo["HugePages_Total"] == 0
    assert used_ram_from(meminfo) == (1000 - 100 - 50 - 200 - 30) * 1024
    assert used_ram_from({}) == 0


@pytest.mark.parametrize("text, expected", [
    ("0-3,6,8-9", frozenset({0, 1, 2, 3, 6, 8, 9})), ("5\n", frozenset({5})), ("", frozenset()),
    ("3-1", None), ("a-b", None),
])
def test_cpu_list(text: str, expected: frozenset[int] | None) -> None:
    assert parse_cpu_list(text) == expected


def test_mountinfo_with_optional_fields_and_escapes() -> None:
    text = (
        "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime shared:15 master:3 - cgroup cgroup rw,memory\n"
        "41 31 0:38 /sub /sys/fs/cgroup/my\\040dir rw,relatime - cgroup2 cgroup2 rw\n"
        "malformed line\n"
    )
    first, second = parse_mountinfo(text)
    assert (first.fs_type, first.mount_point, first.super_options) == ("cgroup", "/sys/fs/cgroup/memory", ("rw", "memory"))
    assert (second.root, second.mount_point, second.fs_type) == ("/sub", "/sys/fs/cgroup/my dir", "cgroup2")


def test_proc_cgroup() -> None:
    paths = parse_proc_cgroup("4:memory:/a/b\n2:cpu,cpuacct:/c\n1:name=systemd:/s\n0::/u\n")
    assert paths == {"memory": "/a/b", "cpu": "/c", "cpuacct": "/c", "name=systemd": "/s", "": "/u"}


def test_v2_limit_files() -> None:
    assert parse_cpu_max("max 100000") is None
    assert parse_cpu_max("50000 100000") == 0.5
    assert parse_memory_max("max") is None
    assert parse_memory_max("1048576\n") == 1048576
    with pytest.raises(ValueError):
        parse_cpu_max("x 100000")


@pytest.mark.parametrize("machine, variant", [
    ("aarch64", "v8"), ("armv7l", "v7"), ("armv6l", "v6"), ("x86_64", ""), ("riscv64", ""),
])
def test_arch_variant(machine: str, variant: str) -> None:
    assert arch_variant(machine) == variant


@pytest.mark.parametrize("machine, expected", [
    ("x86_64", ("amd64", "")), ("aarch64", ("arm64", "v8")), ("armv7l", ("arm", "v7")),
    ("armv6l", ("arm", "v6")), ("i686", ("386", "")), ("riscv64", ("riscv64", "")), ("", ("", "")),
])
def test_uname_machine_names_become_the_goarch_names_cm_compares(machine: str, expected: tuple[str, str]) -> None:
    """CM matches arch_info.architecture exactly against an image's `amd64`/`arm64` (HARDWARE.md)."""
    assert goarch(machine) == expected

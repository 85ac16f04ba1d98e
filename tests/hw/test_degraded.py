"""A malformed or missing file degrades that one figure, never the whole probe."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import pytest

from aos_sm.hw import probe_node

CopyBoard = Callable[[str], Path]
FULL_RK3399 = round(2 * 1800 * 4.9 + 4 * 1416 * 2.3)


def test_garbage_max_freq_degrades_only_that_core(board_copy: CopyBoard) -> None:
    root = board_copy("rk3399")
    (root / "sys/devices/system/cpu/cpu4/cpufreq/cpuinfo_max_freq").write_text("fast\n")
    node = probe_node(root)
    cpu4 = node.cpus[4]
    assert (cpu4.max_mhz_source, cpu4.provenance) == ("guess", "estimate")
    assert all(c.provenance == "table" for i, c in enumerate(node.cpus) if i != 4)
    assert node.max_dmips == round(1800 * 4.9 + 600 * 4.9 + 4 * 1416 * 2.3)
    assert node.dmips_provenance == "estimate"
    assert node.total_ram > 0


def test_corrupt_meminfo_degrades_ram_only(board_copy: CopyBoard) -> None:
    root = board_copy("rk3399")
    (root / "proc/meminfo").write_text("MemTotal: lots kB\n\x00\x01garbage")
    node = probe_node(root)
    assert node.total_ram == 0 and node.allowed_ram == 0
    assert any("MemTotal" in w for w in node.warnings)
    assert node.max_dmips == FULL_RK3399


def test_missing_cpuinfo_still_probes_one_estimated_core(board_copy: CopyBoard) -> None:
    root = board_copy("rk3399")
    (root / "proc/cpuinfo").unlink()
    node = probe_node(root)
    assert len(node.cpus) == 1 and node.max_dmips > 0
    assert node.dmips_provenance == "estimate"
    assert any("/proc/cpuinfo" in w for w in node.warnings)


def test_garbled_cpu_part_falls_back_to_an_estimate(board_copy: CopyBoard) -> None:
    root = board_copy("imx8mq")
    text = (root / "proc/cpuinfo").read_text().replace("CPU part\t: 0xd03", "CPU part\t: 0xzz", 1)
    (root / "proc/cpuinfo").write_text(text)
    node = probe_node(root)
    assert node.cpus[0].identity == "unknown" and node.cpus[0].provenance == "estimate"
    assert [c.identity for c in node.cpus[1:]] == ["Cortex-A53"] * 3
    assert node.max_dmips == round(4 * 1500 * 2.3)  # unknown cores are assumed A53-class


def test_unknown_big_core_scaled_from_a_known_core_by_cpu_capacity(board_copy: CopyBoard) -> None:
    # Pretend the big cores are Cortex-A73 (no table row): their DMIPS follow cpu_capacity
    # relative to the A53s: 1416 x 2.3 x 1024 / 381 per core.
    root = board_copy("rk3399")
    text = (root / "proc/cpuinfo").read_text().replace("0xd08", "0xd09")
    (root / "proc/cpuinfo").write_text(text)
    node = probe_node(root)
    big = node.cpus[4]
    assert big.identity == "Cortex-A73" and big.provenance == "device-tree"
    assert big.dmips == pytest.approx(1416 * 2.3 * 1024 / 381)
    assert node.dmips_provenance == "device-tree"


def test_equal_capacities_do_not_scale(board_copy: CopyBoard) -> None:
    # meson-g12b.dtsi has no capacity-dmips-mhz: every core reads 1024, which says nothing.
    root = board_copy("rk3399")
    (root / "proc/cpuinfo").write_text((root / "proc/cpuinfo").read_text().replace("0xd08", "0xd09"))
    for index in range(6):
        (root / f"sys/devices/system/cpu/cpu{index}/cpu_capacity").write_text("1024\n")
    node = probe_node(root)
    assert node.cpus[4].provenance == "estimate"
    assert node.cpus[4].dmips_per_mhz == pytest.approx(4.9)  # A73 estimated in the A72 class


def test_offline_core_is_not_counted(board_copy: CopyBoard) -> None:
    root = board_copy("rk3399")
    (root / "sys/devices/system/cpu/online").write_text("0-4\n")
    node = probe_node(root)
    assert node.cpus[5].online is False
    assert node.max_dmips == round(1800 * 4.9 + 4 * 1416 * 2.3)


def test_malformed_cgroup_files_drop_only_that_limit(board_copy: CopyBoard) -> None:
    root = board_copy("rk3399")
    (root / "sys/fs/cgroup/memory/aos/memory.limit_in_bytes").write_text("two gigs\n")
    node = probe_node(root, cgroup_path="/aos")
    assert node.allowed_ram == node.total_ram
    assert node.usable_cpus == (0, 1, 2, 3)  # the cpuset still applies
    assert any("limit_in_bytes" in w for w in node.warnings)


def test_malformed_v2_cpu_max_is_reported(board_copy: CopyBoard) -> None:
    root = board_copy("rpi4")
    (root / "sys/fs/cgroup/aos.slice/cpu.max").write_text("lots\n")
    node = probe_node(root, cgroup_path="/aos.slice")
    assert node.allowed_dmips == round(3 * 1500 * 4.9)  # cpuset 1-3 only
    assert node.allowed_ram == 1024 * 1024 * 1024
    assert any("cpu.max" in w for w in node.warnings)


def test_empty_root_does_not_crash(tmp_path: Path) -> None:
    node = probe_node(tmp_path)
    assert node.max_dmips > 0
    assert node.cgroups.mode == "none"
    assert node.architecture == ""
    assert node.warnings


def test_missing_cgroup_tree_keeps_cpu_figures(board_copy: CopyBoard) -> None:
    root = board_copy("rpi4")
    shutil.rmtree(root / "sys/fs/cgroup")
    node = probe_node(root, cgroup_path="/aos.slice")
    assert node.cgroups.mode == "v2"  # mountinfo still says so
    assert node.allowed_dmips == node.max_dmips == round(4 * 1500 * 4.9)

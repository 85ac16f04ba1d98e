"""Every board fixture: per-core identity, clock, DMIPS with provenance, and the totals.

Expected figures are computed here by hand from HARDWARE.md's table (A7 1.9, A53 2.3, A72 4.9;
x86 no row: 4.9 estimate) and the fixture's own facts, not copied from the code's output.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from aos_sm.hw import probe_node

BOARDS = Path(__file__).resolve().parents[1] / "data" / "boards"
A7, A53, A72 = 1.9, 2.3, 4.9
MIB = 1024 * 1024


def mem_total(board: str) -> int:
    for line in (BOARDS / board / "proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("fixture without MemTotal")


# board: (per-core (identity, MHz, DMIPS/MHz), provenance, arch, variant, cgroup mode)
EXPECTED = {
    "rpi3": ([("Cortex-A53", 1200, A53)] * 4, "table", "arm", "v7", "v1"),
    "rpi4": ([("Cortex-A72", 1500, A72)] * 4, "table", "arm64", "v8", "v2"),
    "rk3399": ([("Cortex-A53", 1416, A53)] * 4 + [("Cortex-A72", 1800, A72)] * 2, "table", "arm64", "v8", "hybrid"),
    "imx8mq": ([("Cortex-A53", 1500, A53)] * 4, "table", "arm64", "v8", "v2"),
    "stm32mp157c-dk2": ([("Cortex-A7", 650, A7)] * 2, "table", "arm", "v7", "v1"),
    "rpi3-nocpufreq": ([("Cortex-A53", 600, A53)] * 4, "estimate", "arm64", "v8", "hybrid"),
}


@pytest.mark.parametrize("board", sorted(EXPECTED))
def test_arm_board_cores_and_totals(board: str) -> None:
    cores, provenance, arch, variant, mode = EXPECTED[board]
    node = probe_node(BOARDS / board)
    assert [(c.identity, c.max_mhz, c.dmips_per_mhz) for c in node.cpus] == cores
    for core, (_, mhz, per_mhz) in zip(node.cpus, cores):
        assert core.dmips == pytest.approx(mhz * per_mhz)
        assert core.provenance == provenance
    assert node.max_dmips == round(sum(mhz * per_mhz for _, mhz, per_mhz in cores))
    assert node.dmips_provenance == provenance
    assert node.total_ram == mem_total(board)
    assert (node.architecture, node.arch_variant, node.os_name) == (arch, variant, "linux")
    assert node.os_version == (BOARDS / board / "proc/sys/kernel/osrelease").read_text().strip()
    assert node.cgroups.mode == mode
    assert node.os_features[0] == f"cgroup-{mode}"


def test_rk3399_counts_each_cluster_with_its_own_core_and_clock() -> None:
    node = probe_node(BOARDS / "rk3399")
    expected = 2 * 1800 * 4.9 + 4 * 1416 * 2.3  # 30667.2
    assert node.max_dmips == 30667
    assert node.max_dmips == round(expected)
    assert node.max_dmips not in (round(6 * 1800 * 4.9), round(6 * 1416 * 2.3))
    assert [c.cluster for c in node.cpus] == [0, 0, 0, 0, 1, 1]
    assert [c.capacity for c in node.cpus] == [381] * 4 + [1024] * 2
    assert [c.part for c in node.cpus] == [0xD03] * 4 + [0xD08] * 2
    assert all(c.max_mhz_source == "cpufreq" for c in node.cpus)


def test_rk3399_agent_cgroup_has_no_limits_and_hybrid_v2_cannot_limit() -> None:
    node = probe_node(BOARDS / "rk3399")
    assert node.allowed_dmips == node.max_dmips
    assert node.allowed_ram == node.total_ram
    assert node.cgroups.v2_controllers == ()
    assert dict(node.cgroups.limiting) == {"cpu": 1, "cpuset": 1, "memory": 1}
    assert any("hybrid" in w for w in node.warnings)


def test_rk3399_workloads_pinned_to_little_cores() -> None:
    node = probe_node(BOARDS / "rk3399", cgroup_path="/aos")
    assert node.usable_cpus == (0, 1, 2, 3)
    assert node.allowed_dmips == round(4 * 1416 * 2.3)  # 13027: only the A53s
    assert node.allowed_ram == 2 * 1024 * MIB


def test_rpi3_quota_from_an_existing_ancestor_of_a_future_cgroup() -> None:
    # /aos/workloads does not exist yet; /aos has cfs_quota 150000 / period 100000 = 1.5 CPUs.
    node = probe_node(BOARDS / "rpi3", cgroup_path="/aos/workloads")
    assert node.cgroup_limits.cpu_quota_cpus == 1.5
    assert node.allowed_dmips == round(1.5 * 1200 * 2.3)  # 4140
    assert node.cgroups.limiter("memory") is None
    assert node.allowed_ram == node.total_ram
    assert "cgroup-memory-v1" not in node.os_features
    assert any("memory controller" in w for w in node.warnings)


def test_rpi4_v2_limits() -> None:
    node = probe_node(BOARDS / "rpi4", cgroup_path="aos.slice")
    assert node.cgroup_limits.cpuset == frozenset({1, 2, 3})
    assert node.cgroup_limits.cpu_quota_cpus == 2.0
    # cpuset leaves 3 A72s, the quota 2 CPUs' worth: the quota binds.
    assert node.allowed_dmips == round(2 * 1500 * 4.9)
    assert node.allowed_ram == 1024 * MIB


def test_stm32mp1_memory_limit_of_the_agents_own_cgroup() -> None:
    node = probe_node(BOARDS / "stm32mp157c-dk2")
    assert node.allowed_ram == 256 * MIB
    assert node.cgroups.path_for("memory") == "/system.slice/aos-sm.service"


def test_board_without_cpufreq_gets_a_flagged_estimate_not_zero() -> None:
    node = probe_node(BOARDS / "rpi3-nocpufreq")
    assert node.max_dmips > 0
    assert node.dmips_provenance == "estimate"
    assert all(c.max_mhz_source == "guess" and c.provenance == "estimate" for c in node.cpus)
    # ARM BogoMIPS (38.40, a timer rate) must not be taken for a clock.
    assert all(c.max_mhz != pytest.approx(38.4) and c.max_mhz != pytest.approx(19.2) for c in node.cpus)
    assert any("no max frequency" in w for w in node.warnings)


def test_x86_uses_base_frequency_and_counts_each_core_once_across_smt_threads() -> None:
    node = probe_node(BOARDS / "x86-i5-8250u")
    assert len(node.cpus) == 8
    assert all(c.identity == "Intel(R) Core(TM) i5-8250U CPU @ 1.60GHz" for c in node.cpus)
    assert all((c.max_mhz, c.max_mhz_source, c.threads_in_core) == (1600, "base_frequency", 2) for c in node.cpus)
    # 4 physical cores x 1600 MHz x 4.9 (x86 estimate), not 8 x ... and not the 3.4 GHz turbo.
    assert node.max_dmips == round(4 * 1600 * 4.9)
    assert node.dmips_provenance == "estimate"
    assert all("Cortex-A72" in c.dmips_per_mhz_source for c in node.cpus)  # the stated rationale
    assert (node.architecture, node.arch_variant, node.machine) == ("amd64", "", "x86_64")
    assert node.total_ram == mem_total("x86-i5-8250u")


def test_x86_memory_limit_in_v2() -> None:
    node = probe_node(BOARDS / "x86-i5-8250u", cgroup_path="/aos.slice")
    assert node.allowed_ram == 4096 * MIB


def test_operator_override_wins_and_keeps_the_cgroup_share() -> None:
    node = probe_node(BOARDS / "rk3399", operator_max_dmips=40000, cgroup_path="/aos")
    assert node.max_dmips == 40000
    assert node.dmips_provenance == "operator"
    little_share = (4 * 1416 * 2.3) / (2 * 1800 * 4.9 + 4 * 1416 * 2.3)
    assert node.allowed_dmips == round(40000 * little_share)


def test_system_reserve_caps_allowed_figures() -> None:
    node = probe_node(BOARDS / "imx8mq", reserve_dmips_percent=25, reserve_ram_percent=10)
    assert node.allowed_dmips == round(4 * 1500 * 2.3 * 0.75)
    assert node.allowed_ram == int(mem_total("imx8mq") * 0.9)
    # A cgroup stricter than the reserve wins: rk3399 /aos leaves 13027 of 30667 (< 75 %).
    pinned = probe_node(BOARDS / "rk3399", cgroup_path="/aos", reserve_dmips_percent=25)
    assert pinned.allowed_dmips == round(4 * 1416 * 2.3)


@pytest.mark.parametrize("bad", [-1.0, 100.0])
def test_invalid_reserve_is_rejected(bad: float) -> None:
    with pytest.raises(ValueError, match="reserve_ram_percent"):
        probe_node(BOARDS / "imx8mq", reserve_ram_percent=bad)

"""Per-core facts from /sys/devices/system/cpu (Documentation/ABI/stable/sysfs-devices-system-cpu).

Each reader returns None when the file is missing or malformed; the caller falls back and says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ._read import parse_cpu_list, read_be_u32, read_int, read_text

CPU_DIR = "/sys/devices/system/cpu"


@dataclass(frozen=True)
class CoreSysfs:
    """What sysfs says about one logical CPU; None = the kernel or board does not expose it."""

    max_freq_khz: int | None  # cpufreq/cpuinfo_max_freq (Documentation/admin-guide/pm/cpufreq.rst)
    base_freq_khz: int | None  # cpufreq/base_frequency, intel_pstate only (pm/intel_pstate.rst)
    cppc_nominal_mhz: int | None  # acpi_cppc/nominal_freq, in MHz (admin-guide/acpi/cppc_sysfs.rst)
    devicetree_clock_hz: int | None  # of_node/clock-frequency (DT spec 3.8, cpu node)
    capacity: int | None  # cpu_capacity (devicetree/bindings/cpu/cpu-capacity.txt)
    cluster_id: int | None  # topology/cluster_id, Linux >= 5.16
    package_id: int | None  # topology/physical_package_id
    threads_in_core: int | None  # size of topology/thread_siblings_list


def read_online_cpus(root: Path) -> frozenset[int] | None:
    """The `online` cpu list, or None when absent/malformed (then every listed CPU counts)."""
    text = read_text(root, f"{CPU_DIR}/online")
    return None if text is None else parse_cpu_list(text)


def _positive(value: int | None) -> int | None:
    return value if value is not None and value > 0 else None


def read_core_sysfs(root: Path, index: int) -> CoreSysfs:
    """Every per-core sysfs figure we use for logical CPU `index`."""
    base = f"{CPU_DIR}/cpu{index}"
    siblings_text = read_text(root, f"{base}/topology/thread_siblings_list")
    siblings = parse_cpu_list(siblings_text) if siblings_text is not None else None
    cluster = read_int(root, f"{base}/topology/cluster_id")
    package = read_int(root, f"{base}/topology/physical_package_id")
    return CoreSysfs(
        max_freq_khz=_positive(read_int(root, f"{base}/cpufreq/cpuinfo_max_freq")),
        base_freq_khz=_positive(read_int(root, f"{base}/cpufreq/base_frequency")),
        cppc_nominal_mhz=_positive(read_int(root, f"{base}/acpi_cppc/nominal_freq")),
        devicetree_clock_hz=_positive(read_be_u32(root, f"{base}/of_node/clock-frequency")),
        capacity=_positive(read_int(root, f"{base}/cpu_capacity")),
        # -1 means "not described" on some kernels (drivers/base/arch_topology.c).
        cluster_id=cluster if cluster is not None and cluster >= 0 else None,
        package_id=package if package is not None and package >= 0 else None,
        threads_in_core=len(siblings) if siblings else None,
    )

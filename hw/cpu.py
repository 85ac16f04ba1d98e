"""Every core with its identity, maximum frequency, relative capacity, cluster and DMIPS.

DMIPS of a core = DMIPS/MHz(its design) x its max MHz / hardware threads sharing it. Each core is
counted with its own part and frequency, so big.LITTLE / DynamIQ SoCs (RK3399: 2 x A72 + 4 x A53)
are counted neither all-big nor all-little (HARDWARE.md "Relative capacity").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from ._read import read_text
from .cpu_sysfs import CoreSysfs, read_core_sysfs, read_online_cpus
from .cpuinfo import CpuinfoEntry, parse_cpuinfo
from .dmips_table import X86_ESTIMATE, DmipsFigure, Provenance, arm_core_name, dmips_per_mhz_for_arm, weakest

# With no frequency anywhere (no cpufreq, no device-tree clock) an ARM core is assumed to run at
# 600 MHz, the lowest clock we know a board to run at for lack of a cpufreq driver: a Raspberry
# Pi 3 on a mainline kernel before the raspberrypi-cpufreq driver (Linux 5.3) stays at its
# firmware's 600 MHz. The guess errs low (RPi 3 tops at 1200, STM32MP157C at 650). ARM BogoMIPS is
# no help: it is twice the arch timer rate (github.com/google/benchmark issue 312), e.g. 38.40.
GUESSED_MHZ = 600.0

_MODEL_NAME_GHZ = re.compile(r"@\s*([0-9.]+)\s*GHz", re.IGNORECASE)


@dataclass(frozen=True)
class CoreInfo:
    """One logical CPU as we count it."""

    index: int
    online: bool
    identity: str  # `Cortex-A53`, or the x86 `model name`, or `unknown`
    implementer: int | None  # ARM `CPU implementer` (0x41 = Arm Ltd)
    part: int | None  # ARM `CPU part`
    max_mhz: float
    max_mhz_source: str  # cpufreq | base_frequency | acpi_cppc | device-tree | model-name | cpuinfo-mhz | bogomips | guess
    capacity: int | None  # kernel cpu_capacity (0..1024, relative within this SoC)
    cluster: int  # cores of one design, frequency and topology cluster share a number
    threads_in_core: int  # SMT siblings sharing this core's pipeline
    dmips_per_mhz: float
    dmips_per_mhz_source: str
    dmips: float  # this logical CPU's share
    provenance: Provenance  # weakest of the DMIPS/MHz figure and the frequency

    @property
    def part_or_model(self) -> str:
        """`0xd03 Cortex-A53` on ARM, the model name on x86."""
        if self.part is not None:
            return f"{self.part:#05x} {self.identity}"
        return self.identity


def _frequency(entry: CpuinfoEntry, sysfs: CoreSysfs, is_arm: bool) -> tuple[float, str, bool]:
    """(MHz, source, is_estimate) by the first source that answers, best first.

    On x86 the guaranteed base clock comes first: intel_pstate's cpuinfo_max_freq is the
    single-core turbo clock, not what all cores sustain (Documentation/admin-guide/pm/intel_pstate.rst).
    Vendors can fake cpufreq (Amlogic S905W, github.com/Dr-Noob/cpufetch issue 266); we cannot
    detect that here and report the source so the operator can judge.
    """
    if not is_arm:
        if sysfs.base_freq_khz:
            return sysfs.base_freq_khz / 1000, "base_frequency", False
        if sysfs.cppc_nominal_mhz:
            return float(sysfs.cppc_nominal_mhz), "acpi_cppc", False
    if sysfs.max_freq_khz:
        return sysfs.max_freq_khz / 1000, "cpufreq", False
    if sysfs.devicetree_clock_hz:
        return sysfs.devicetree_clock_hz / 1_000_000, "device-tree", False
    if not is_arm:
        match = _MODEL_NAME_GHZ.search(entry.model_name or "")
        if match:  # Intel model names carry the rated base clock: "... CPU @ 1.60GHz"
            return float(match.group(1)) * 1000, "model-name", False
        if entry.cpu_mhz:  # the current clock (or the TSC rate in a VM), not the maximum
            return entry.cpu_mhz, "cpuinfo-mhz", True
        if entry.bogomips:  # x86 calibrates BogoMIPS as 2 x the TSC MHz
            return entry.bogomips / 2, "bogomips", True
    return GUESSED_MHZ, "guess", True


def _threads_in_core(entry: CpuinfoEntry, sysfs: CoreSysfs) -> int:
    if sysfs.threads_in_core:
        return sysfs.threads_in_core
    if entry.siblings and entry.cpu_cores and entry.siblings >= entry.cpu_cores:
        return max(1, entry.siblings // entry.cpu_cores)
    return 1


def _core(entry: CpuinfoEntry, sysfs: CoreSysfs, online: bool) -> CoreInfo:
    is_arm = entry.implementer is not None
    if is_arm:
        identity = arm_core_name(entry.implementer, entry.part) or "unknown"
        figure = dmips_per_mhz_for_arm(identity if identity != "unknown" else None)
    else:
        identity = entry.model_name or "unknown"
        figure = X86_ESTIMATE
    mhz, source, freq_is_estimate = _frequency(entry, sysfs, is_arm)
    threads = _threads_in_core(entry, sysfs)
    provenance: Provenance = "estimate" if freq_is_estimate else figure.provenance
    return CoreInfo(
        index=entry.processor, online=online, identity=identity, implementer=entry.implementer,
        part=entry.part, max_mhz=mhz, max_mhz_source=source, capacity=sysfs.capacity,
        cluster=-1, threads_in_core=threads, dmips_per_mhz=figure.dmips_per_mhz,
        dmips_per_mhz_source=figure.source,
        # SMT siblings share one core: count its DMIPS once, split over its threads (conservative;
        # SMT usually adds 20-30 % throughput that we do not claim).
        dmips=figure.dmips_per_mhz * mhz / threads, provenance=provenance,
    )


def _scale_by_capacity(cores: list[CoreInfo]) -> list[CoreInfo]:
    """Replace a guessed DMIPS/MHz by one scaled from a tabled core of the same SoC.

    cpu_capacity is capacity-dmips-mhz x max frequency, normalised to 1024 for the fastest core
    (cpu-capacity.txt), so DMIPS(a) / DMIPS(b) = capacity(a) / capacity(b). It only helps when the
    capacities differ: many device trees omit it and every core reads 1024 (meson-g12b.dtsi).
    """
    known = [c for c in cores if c.provenance == "table" and c.capacity]
    capacities = {c.capacity for c in cores if c.capacity}
    if not known or len(capacities) < 2:
        return cores
    reference = known[0]
    assert reference.capacity is not None
    scaled: list[CoreInfo] = []
    for core in cores:
        # Only a guessed design is replaced; its clock must be a reported one, as the reference's is.
        if core.provenance == "estimate" and core.capacity and core.max_mhz_source in ("cpufreq", "device-tree"):
            dmips = reference.dmips * core.capacity / reference.capacity
            per_mhz = dmips * core.threads_in_core / core.max_mhz
            core = replace(
                core, dmips=dmips, dmips_per_mhz=round(per_mhz, 3), provenance="device-tree",
                dmips_per_mhz_source=(
                    f"cpu_capacity {core.capacity}/{reference.capacity} x cpu{reference.index} "
                    f"{reference.identity}"
                ),
            )
        scaled.append(core)
    return scaled


def _assign_clusters(cores: list[CoreInfo], sysfs: dict[int, CoreSysfs]) -> list[CoreInfo]:
    """Group cores by topology cluster (or package) plus design and max clock, in index order."""
    numbers: dict[tuple[object, ...], int] = {}
    result = []
    for core in cores:
        facts = sysfs[core.index]
        topology = facts.cluster_id if facts.cluster_id is not None else facts.package_id
        key = (topology, core.identity, core.part, round(core.max_mhz))
        result.append(replace(core, cluster=numbers.setdefault(key, len(numbers))))
    return result


def probe_cores(root: Path) -> tuple[tuple[CoreInfo, ...], tuple[str, ...]]:
    """All CPUs listed in /proc/cpuinfo, with warnings for every degraded figure."""
    warnings: list[str] = []
    text = read_text(root, "/proc/cpuinfo")
    entries = parse_cpuinfo(text) if text is not None else ()
    if not entries:
        warnings.append("/proc/cpuinfo missing or unparsable: one unknown core assumed")
        entries = (CpuinfoEntry(processor=0),)
    online = read_online_cpus(root)
    if online is None:
        warnings.append("/sys/devices/system/cpu/online unreadable: every listed CPU counted online")
    sysfs = {entry.processor: read_core_sysfs(root, entry.processor) for entry in entries}
    cores = [_core(e, sysfs[e.processor], online is None or e.processor in online) for e in entries]
    cores = _assign_clusters(_scale_by_capacity(cores), sysfs)
    guessed: dict[tuple[str, float], list[str]] = {}
    for core in cores:
        if core.max_mhz_source in ("cpuinfo-mhz", "bogomips", "guess"):
            guessed.setdefault((core.max_mhz_source, core.max_mhz), []).append(str(core.index))
        if core.identity == "unknown":
            warnings.append(f"cpu{core.index}: unknown core design; DMIPS/MHz estimated")
    for (source, mhz), indexes in guessed.items():
        warnings.append(
            f"cpu {','.join(indexes)}: no max frequency reported; {mhz:.0f} MHz from {source} is an "
            "estimate (set maxDMIPS to override)"
        )
    return tuple(cores), tuple(warnings)


def total_dmips(cores: tuple[CoreInfo, ...], usable: frozenset[int] | None = None) -> float:
    """Sum of DMIPS over online cores (restricted to `usable` when given)."""
    return sum(c.dmips for c in cores if c.online and (usable is None or c.index in usable))


def dmips_provenance(cores: tuple[CoreInfo, ...]) -> str:
    """The weakest provenance among online cores."""
    return weakest([c.provenance for c in cores if c.online])


__all__ = ["CoreInfo", "DmipsFigure", "probe_cores", "total_dmips", "dmips_provenance"]

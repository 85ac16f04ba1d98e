"""What we know about cores: Arm part numbers and DMIPS/MHz, each row with its source.

Every figure cites where it comes from and how sure it is (../shared/HARDWARE.md). Dhrystone 2.1
is compiler-sensitive, so +-15 % is normal; these figures size a node for scheduling, they are not
benchmarks. Cores without a citable figure are estimated from the nearest core of the same class
and flagged `estimate`, so an operator knows to confirm them (or set `maxDMIPS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Provenance = Literal["table", "device-tree", "measured", "estimate", "operator"]
"""Where a figure comes from.

table: a row below with a published or derived source. device-tree: scaled from a table core of
the same SoC by the kernel's `cpu_capacity` (Linux Documentation/devicetree/bindings/cpu/
cpu-capacity.txt). measured: a benchmark run on the node (not produced by hw/ today; reserved for a
calibration step). estimate: a guess with a stated rationale. operator: `maxDMIPS` in the config.
"""

# Weakest last: a total is only as sure as its least sure part.
PROVENANCE_STRENGTH: dict[str, int] = {
    "operator": 4, "measured": 3, "table": 2, "device-tree": 1, "estimate": 0,
}

ARM_LTD = 0x41

# Arm Ltd `CPU part` numbers: Linux arch/arm64/include/asm/cputype.h and
# arch/arm/include/asm/cputype.h (HARDWARE.md "CPU identity").
ARM_PART_NAMES: dict[int, str] = {
    0xC05: "Cortex-A5", 0xC07: "Cortex-A7", 0xC08: "Cortex-A8", 0xC09: "Cortex-A9",
    0xC0D: "Cortex-A12", 0xC0F: "Cortex-A15", 0xC0E: "Cortex-A17", 0xD04: "Cortex-A35",
    0xD03: "Cortex-A53", 0xD05: "Cortex-A55", 0xD07: "Cortex-A57", 0xD06: "Cortex-A65",
    0xD08: "Cortex-A72", 0xD09: "Cortex-A73", 0xD0A: "Cortex-A75", 0xD0B: "Cortex-A76",
    0xD0C: "Neoverse-N1", 0xD0D: "Cortex-A77", 0xD41: "Cortex-A78", 0xD44: "Cortex-X1",
    0xD46: "Cortex-A510", 0xD47: "Cortex-A710",
}


@dataclass(frozen=True)
class DmipsFigure:
    """DMIPS per MHz of one core design, with how sure we are and why."""

    dmips_per_mhz: float
    provenance: Provenance
    source: str


# The HARDWARE.md table. A57 and A72 are derived from device-tree capacity ratios against A53
# (2.3 x 1024/578 = 4.07, 2.3 x 1024/485 = 4.86), rounded as HARDWARE.md gives them.
DMIPS_TABLE: dict[str, DmipsFigure] = {
    "Cortex-A7": DmipsFigure(1.9, "table", "published by Arm (Wikipedia 'ARM Cortex-A7 MPCore')"),
    "Cortex-A8": DmipsFigure(2.0, "table", "published (Wikipedia 'ARM Cortex-A')"),
    "Cortex-A9": DmipsFigure(2.5, "table", "published (Android Authority 2012, A9 vs A15)"),
    "Cortex-A15": DmipsFigure(3.5, "table", "published (Android Authority 2012); kernel A15/A7 = 1.90"),
    "Cortex-A53": DmipsFigure(2.3, "table", "unofficial, Arm stopped quoting DMIPS (systemonchips.com)"),
    "Cortex-A57": DmipsFigure(4.1, "table", "derived: Juno A57/A53 = 1024/578 (cpu-capacity binding)"),
    "Cortex-A72": DmipsFigure(
        4.9, "table", "derived: A72/A53 = 1024/485 (arm/juno-r2.dts, rockchip/rk3399-base.dtsi)"
    ),
}

# Cores with no citable figure: (nearest tabled core, ratio, rationale). The result is `estimate`.
# A76 has a derived ratio to A55 (rockchip/rk3588-base.dtsi: 1024/530 = 1.93), but A55 itself has
# no figure, so A76 inherits A55's estimate (A55 ~ A53: same in-order dual-issue little class).
_NEAREST: dict[str, tuple[str, float, str]] = {
    "Cortex-A5": ("Cortex-A7", 1.0, "in-order ARMv7 little core; A7 is its nearest tabled class"),
    "Cortex-A35": ("Cortex-A7", 1.0, "ARMv8 successor of A7 in the same efficiency class"),
    "Cortex-A12": ("Cortex-A15", 1.0, "ARMv7 out-of-order; A15 is the nearest tabled class"),
    "Cortex-A17": ("Cortex-A15", 1.0, "ARMv7 out-of-order; A15 is the nearest tabled class"),
    "Cortex-A55": ("Cortex-A53", 1.0, "successor of A53 in the same in-order little class"),
    "Cortex-A510": ("Cortex-A53", 1.0, "in-order little class of A53/A55"),
    "Cortex-A65": ("Cortex-A53", 1.0, "little/throughput class; no better figure found"),
    "Cortex-A73": ("Cortex-A72", 1.0, "big out-of-order core of the A72 generation"),
    "Cortex-A75": ("Cortex-A72", 1.0, "big out-of-order core; A72 is the nearest tabled class"),
    "Cortex-A76": ("Cortex-A53", 1.93, "RK3588 capacity A76/A55 = 1024/530, A55 taken as A53"),
    "Cortex-A77": ("Cortex-A53", 1.93, "A76 class (A76 = 1.93 x A55, A55 taken as A53)"),
    "Cortex-A78": ("Cortex-A53", 1.93, "A76 class (A76 = 1.93 x A55, A55 taken as A53)"),
    "Cortex-X1": ("Cortex-A53", 1.93, "A76 class (A76 = 1.93 x A55, A55 taken as A53)"),
    "Cortex-A710": ("Cortex-A53", 1.93, "A76 class (A76 = 1.93 x A55, A55 taken as A53)"),
    "Neoverse-N1": ("Cortex-A53", 1.93, "server sibling of A76 (A76 = 1.93 x A55)"),
}

# Not an Arm Ltd core, or a part we do not know: assume the most common little core (A53), the
# conservative choice, so CM does not over-schedule a board we cannot identify.
_UNKNOWN_ARM = ("Cortex-A53", 1.0, "unknown core; assumed no faster than the common A53 little core")

# x86 has no row in HARDWARE.md. Modern x86 cores are wide out-of-order designs at least as capable
# per clock as the widest Arm core in the table, so we take Cortex-A72's 4.9 as a floor: a
# deliberate underestimate (desktop cores score higher), so CM never over-schedules; the operator
# can state the real figure with `maxDMIPS`.
X86_ESTIMATE = DmipsFigure(
    4.9, "estimate", "no citable x86 figure; floor = widest tabled out-of-order core (Cortex-A72)"
)


def arm_core_name(implementer: int | None, part: int | None) -> str | None:
    """`Cortex-A53` for an Arm Ltd part number we know, else None."""
    if implementer == ARM_LTD and part is not None:
        return ARM_PART_NAMES.get(part)
    return None


def dmips_per_mhz_for_arm(core_name: str | None) -> DmipsFigure:
    """The table figure for a known core, else an estimate from the nearest class (flagged)."""
    if core_name is not None and core_name in DMIPS_TABLE:
        return DMIPS_TABLE[core_name]
    nearest, ratio, why = _NEAREST.get(core_name or "", _UNKNOWN_ARM)
    base = DMIPS_TABLE[nearest]
    return DmipsFigure(round(base.dmips_per_mhz * ratio, 3), "estimate", f"{why} ({nearest} {base.dmips_per_mhz})")


def weakest(provenances: list[str]) -> str:
    """The least sure provenance of a list (an empty list is `estimate`: we know nothing)."""
    if not provenances:
        return "estimate"
    return min(provenances, key=lambda name: PROVENANCE_STRENGTH.get(name, 0))

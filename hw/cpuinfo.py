"""Parse /proc/cpuinfo into one record per logical CPU.

ARM kernels print `CPU implementer`, `CPU part`, `CPU variant`, `CPU revision` and no MHz field
(arch/arm64/kernel/cpuinfo.c, arch/arm/kernel/setup.c); x86 prints `model name`, `cpu MHz`
(the current clock, not the maximum), `siblings`, `cpu cores` (arch/x86/kernel/cpu/proc.c).
32-bit ARM kernels spell bogomips `BogoMIPS`, x86 `bogomips`; keys are matched case-insensitively.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CpuinfoEntry:
    """One `processor` block of /proc/cpuinfo; None where the kernel did not print the field."""

    processor: int
    implementer: int | None = None
    part: int | None = None
    variant: int | None = None
    revision: int | None = None
    architecture: str | None = None
    model_name: str | None = None
    vendor_id: str | None = None
    cpu_mhz: float | None = None
    bogomips: float | None = None
    physical_id: int | None = None
    core_id: int | None = None
    siblings: int | None = None
    cpu_cores: int | None = None


def _int(value: str) -> int | None:
    try:
        return int(value, 0)  # `0x41` and `4` both occur
    except ValueError:
        return None


def _float(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def _entry(fields: dict[str, str]) -> CpuinfoEntry | None:
    processor = _int(fields.get("processor", ""))
    if processor is None:
        return None

    def integer(key: str) -> int | None:
        return _int(fields[key]) if key in fields else None

    def number(key: str) -> float | None:
        return _float(fields[key]) if key in fields else None

    return CpuinfoEntry(
        processor=processor,
        implementer=integer("cpu implementer"),
        part=integer("cpu part"),
        variant=integer("cpu variant"),
        revision=integer("cpu revision"),
        architecture=fields.get("cpu architecture") or None,
        model_name=fields.get("model name") or None,
        vendor_id=fields.get("vendor_id") or None,
        cpu_mhz=number("cpu mhz"),
        bogomips=number("bogomips"),
        physical_id=integer("physical id"),
        core_id=integer("core id"),
        siblings=integer("siblings"),
        cpu_cores=integer("cpu cores"),
    )


def parse_cpuinfo(text: str) -> tuple[CpuinfoEntry, ...]:
    """One entry per `processor` block, in file order. Malformed values become None.

    Blocks without a parsable `processor` number (the trailing `Hardware`/`Revision`/`Model`
    block of Raspberry Pi kernels, garbage) are skipped.
    """
    entries: list[CpuinfoEntry] = []
    fields: dict[str, str] = {}
    for line in [*text.splitlines(), ""]:
        if not line.strip():
            if fields:
                entry = _entry(fields)
                if entry is not None:
                    entries.append(entry)
                fields = {}
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip().lower()] = value.strip()
    return tuple(entries)

"""Memory from /proc/meminfo (Documentation/filesystems/proc.rst, "meminfo"); values are in kB."""

from __future__ import annotations

from pathlib import Path

from ._read import LIVE_ROOT, read_text


def parse_meminfo(text: str) -> dict[str, int]:
    """`{"MemTotal": bytes, ...}`; lines that do not parse are skipped.

    The kernel prints "kB" but means KiB (fs/proc/meminfo.c shifts pages by PAGE_SHIFT - 10).
    """
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        fields = rest.split()
        if not sep or not fields:
            continue
        try:
            number = int(fields[0])
        except ValueError:
            continue
        unit = 1024 if len(fields) > 1 and fields[1] == "kB" else 1
        values[key.strip()] = number * unit
    return values


def read_meminfo(root: Path = LIVE_ROOT) -> dict[str, int]:
    """Parsed /proc/meminfo under `root`; empty when missing."""
    text = read_text(root, "/proc/meminfo")
    return parse_meminfo(text) if text is not None else {}


def used_ram_from(meminfo: dict[str, int]) -> int:
    """Node RAM in use: MemTotal - MemFree - Buffers - Cached - SReclaimable (PROTOCOL.md).

    Missing terms count as 0; the result is clamped at 0.
    """
    free = sum(meminfo.get(k, 0) for k in ("MemFree", "Buffers", "Cached", "SReclaimable"))
    return max(0, meminfo.get("MemTotal", 0) - free)


def used_ram(root: Path = LIVE_ROOT) -> int:
    """Bytes of RAM in use on the node under `root` (what monitoring reports as node `ram`)."""
    return used_ram_from(read_meminfo(root))

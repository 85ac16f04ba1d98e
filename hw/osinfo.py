"""OS and architecture as the reference IAM reports them (HARDWARE.md "CPU identity").

Architecture is what `uname -m` prints (`x86_64`, `aarch64`, `armv7l`); OS `linux`; version the
kernel release. For a fixture root, `proc/sys/kernel/arch` (Linux >= 6.1 has it; it holds the
`uname -m` string) and `proc/sys/kernel/osrelease` stand in for os.uname().
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ._read import is_live_root, read_text


@dataclass(frozen=True)
class OsArch:
    os_name: str
    os_version: str  # kernel release, "" when unknown
    architecture: str  # `uname -m`, "" when unknown
    arch_variant: str  # `v8`, `v7`, `v6`, "" when not derivable


def arch_variant(machine: str) -> str:
    """The OCI-style variant: aarch64/arm64 -> v8; armv7l -> v7; armv6l -> v6; x86 -> "".

    The OCI image index uses `arm64/v8`, `arm/v7`, `arm/v6` (image-spec image-index.md, platform
    variant). x86 variants (x86-64-v2...) are not derivable from uname and are left empty.
    """
    if machine in ("aarch64", "arm64", "aarch64_be"):
        return "v8"
    match = re.match(r"armv(\d+)", machine)
    return f"v{match.group(1)}" if match else ""


def probe_os_arch(root: Path) -> OsArch:
    """OS and architecture of the system under `root`."""
    if is_live_root(root):
        uname = os.uname()
        machine, release = uname.machine, uname.release
    else:
        machine = (read_text(root, "/proc/sys/kernel/arch") or "").strip()
        release = (read_text(root, "/proc/sys/kernel/osrelease") or "").strip()
    return OsArch(os_name="linux", os_version=release, architecture=machine, arch_variant=arch_variant(machine))

"""OS and architecture as CM compares them (HARDWARE.md "CPU identity", PROTOCOL.md "Capacity
semantics").

CM requires `arch_info.architecture` to equal an image config's `architecture` exactly, and image
configs use the OCI/GOARCH names (`amd64`, `arm64`, `arm` + variant `v7`), never `uname -m`'s
(`x86_64`, `aarch64`, `armv7l`): so the probe maps the machine name to GOARCH here and keeps the
`uname -m` string only for people (`machine`). OS `linux`; version the kernel release. For a
fixture root, `proc/sys/kernel/arch` (Linux >= 6.1 has it; it holds the `uname -m` string) and
`proc/sys/kernel/osrelease` stand in for os.uname().
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ._read import is_live_root, read_text

# `uname -m` -> (GOARCH, variant). Go's own table (cmd/dist, GOARCH list) and the OCI image-spec
# platform variants (image-index.md): arm64 is `v8`, 32-bit arm `v6`/`v7`, x86 has no variant.
_GOARCH: dict[str, tuple[str, str]] = {
    "x86_64": ("amd64", ""),
    "amd64": ("amd64", ""),
    "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"),
    "i386": ("386", ""),
    "i486": ("386", ""),
    "i586": ("386", ""),
    "i686": ("386", ""),
    "riscv64": ("riscv64", ""),
    "ppc64le": ("ppc64le", ""),
    "s390x": ("s390x", ""),
    "mips": ("mips", ""),
    "mipsel": ("mipsle", ""),
    "mips64": ("mips64", ""),
    "loongarch64": ("loong64", ""),
}


@dataclass(frozen=True)
class OsArch:
    os_name: str
    os_version: str  # kernel release, "" when unknown
    architecture: str  # GOARCH (`amd64`, `arm64`, `arm`), "" when unknown
    arch_variant: str  # `v8`, `v7`, `v6`, "" when none or not derivable
    machine: str = ""  # what `uname -m` says, for people; never sent to CM


def arch_variant(machine: str) -> str:
    """The OCI-style variant: aarch64/arm64 -> v8; armv7l -> v7; armv6l -> v6; x86 -> "".

    The OCI image index uses `arm64/v8`, `arm/v7`, `arm/v6` (image-spec image-index.md, platform
    variant). x86 variants (x86-64-v2...) are not derivable from uname and are left empty.
    """
    return goarch(machine)[1]


def goarch(machine: str) -> tuple[str, str]:
    """(GOARCH, variant) for a `uname -m` name: `x86_64` -> (`amd64`, ""), `aarch64` -> (`arm64`,
    `v8`), `armv7l` -> (`arm`, `v7`). A name with no mapping is passed through unchanged (an exotic
    machine is better named than blank), and "" stays ""."""
    if machine in _GOARCH:
        return _GOARCH[machine]
    match = re.match(r"armv(\d+)", machine)
    if match:  # armv7l, armv6l, armv5tel: 32-bit arm, the digit is the variant
        return "arm", f"v{match.group(1)}"
    if machine == "aarch64_be":
        return "arm64be", "v8"
    return machine, ""


def probe_os_arch(root: Path) -> OsArch:
    """OS and architecture of the system under `root`."""
    if is_live_root(root):
        uname = os.uname()
        machine, release = uname.machine, uname.release
    else:
        machine = (read_text(root, "/proc/sys/kernel/arch") or "").strip()
        release = (read_text(root, "/proc/sys/kernel/osrelease") or "").strip()
    architecture, variant = goarch(machine)
    return OsArch(os_name="linux", os_version=release, architecture=architecture, arch_variant=variant,
                  machine=machine)

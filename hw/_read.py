"""Reading files under a root directory, psutil `_pslinux.py` style.

Every probe takes a root (default `/`) so the same code reads this machine and a fixture tree of
a board under tests/data/boards. A missing, unreadable or malformed file yields None: the caller
degrades that one figure to "unknown" and records a warning; nothing here raises for OS errors.
"""

from __future__ import annotations

from pathlib import Path

LIVE_ROOT = Path("/")


def under(root: Path, absolute: str) -> Path:
    """Map an absolute path of the probed system (e.g. `/proc/meminfo`) into `root`."""
    return root / absolute.lstrip("/")


def read_text(root: Path, absolute: str) -> str | None:
    """The file's text, or None when it is missing or unreadable (EACCES, EISDIR, ...)."""
    try:
        return under(root, absolute).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def read_int(root: Path, absolute: str) -> int | None:
    """A file holding one decimal integer (sysfs convention), or None if absent or malformed."""
    text = read_text(root, absolute)
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def read_be_u32(root: Path, absolute: str) -> int | None:
    """A device-tree cell property: big-endian 32-bit (the last cell when it holds more).

    Device-tree properties are arrays of big-endian 32-bit cells (Devicetree Specification
    v0.4, section 2.2.4); `clock-frequency` may be one or two cells.
    """
    try:
        data = under(root, absolute).read_bytes()
    except OSError:
        return None
    if len(data) not in (4, 8):
        return None
    return int.from_bytes(data, "big")


def parse_cpu_list(text: str) -> frozenset[int] | None:
    """Parse the kernel's cpu list format ("0-3,6,8-9"), or None when malformed.

    Format: Documentation/ABI/stable/sysfs-devices-system-cpu and cgroup-v2.rst (cpuset.cpus).
    An empty string is a valid, empty list (an empty cpuset).
    """
    cpus: set[int] = set()
    for chunk in text.strip().split(","):
        chunk = chunk.strip()
        if not chunk:
            continue
        first, sep, last = chunk.partition("-")
        try:
            if sep:
                low, high = int(first), int(last)
                if high < low:
                    return None
                cpus.update(range(low, high + 1))
            else:
                cpus.add(int(first))
        except ValueError:
            return None
    return frozenset(cpus)


def is_live_root(root: Path) -> bool:
    """True when `root` is this machine's `/` (then os.uname() is the authority for arch)."""
    try:
        return root.resolve() == LIVE_ROOT
    except OSError:
        return False

"""Probes of a node's real capacity: parsers of /proc and /sys text plus readers taking a root.

The only package that opens /proc and /sys. Every reader takes a root directory (default `/`) so
the same code probes this machine and the board fixture trees under tests/data/boards. Facts and
their sources: ../shared/HARDWARE.md; each module cites what it relies on.
"""

from __future__ import annotations

from .cgroup_limits import CgroupLimits
from .cgroups import CgroupLayout, CgroupMount
from .cpu import CoreInfo
from .memory import used_ram
from .node import NodeCapacity, probe_node
from .resources import Resource, ResourceHost, ResourceMount, ResourcesResult, load_resources

__all__ = [
    "CgroupLayout", "CgroupLimits", "CgroupMount", "CoreInfo", "NodeCapacity", "Resource",
    "ResourceHost", "ResourceMount", "ResourcesResult", "load_resources", "probe_node", "used_ram",
]

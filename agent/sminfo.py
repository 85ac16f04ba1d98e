"""SMInfo messages from decided values (PROTOCOL.md "RuntimeInfo and ResourceInfo").

Pure: no I/O. What goes in (which runtimes and resources, which capacity, the OS and architecture
strings, what CM's limits leave out) is decided by agent/registration.py; this module only turns
those values into the wire messages.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Sequence, Tuple

from aos_sm.proto.common.v2 import common_pb2
from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

# The reference SM's default instance limit per runtime (PROTOCOL.md).
DEFAULT_MAX_INSTANCES = 256


@dataclass(frozen=True)
class Platform:
    """What every RuntimeInfo says about the node's OS and CPU architecture (GOARCH names)."""

    os_name: str
    os_version: str
    os_features: Tuple[str, ...]
    architecture: str
    variant: str


@dataclass(frozen=True)
class RuntimeCapacity:
    """One runtime's capacity fields; ``allowed_*`` 0 means "no fixed budget" to CM."""

    max_dmips: int
    allowed_dmips: int
    total_ram: int
    allowed_ram: int


def runtime_id(runtime_type: str, node_id: str) -> str:
    """Name-based UUID v3 in the OID namespace of "<type>-<nodeID>", as the reference computes it."""
    return str(uuid.uuid3(uuid.NAMESPACE_OID, f"{runtime_type}-{node_id}"))


def build_runtime_info(runtime_type: str, node_id: str, capacity: RuntimeCapacity, platform: Platform,
                       max_instances: int = DEFAULT_MAX_INSTANCES) -> sm_pb2.RuntimeInfo:
    """One runtime's entry: probed capacity (the reference leaves these at 0) and the platform."""
    return sm_pb2.RuntimeInfo(
        runtime_id=runtime_id(runtime_type, node_id),
        type=runtime_type,
        max_dmips=capacity.max_dmips,
        allowed_dmips=capacity.allowed_dmips,
        total_ram=capacity.total_ram,
        allowed_ram=capacity.allowed_ram,
        max_instances=max_instances,
        os_info=common_pb2.OSInfo(os=platform.os_name, version=platform.os_version,
                                  features=list(platform.os_features)),
        arch_info=common_pb2.ArchInfo(architecture=platform.architecture, variant=platform.variant),
    )


def build_sm_info(node_id: str, runtimes: Sequence[Tuple[str, RuntimeCapacity]], platform: Platform,
                  resources: Sequence[Tuple[str, int]],
                  max_instances: int = DEFAULT_MAX_INSTANCES) -> sm_pb2.SMInfo:
    """SMInfo with one RuntimeInfo per (type, capacity) and one ResourceInfo per (name, shared_count)."""
    return sm_pb2.SMInfo(
        node_id=node_id,
        runtimes=[build_runtime_info(kind, node_id, capacity, platform, max_instances)
                  for kind, capacity in runtimes],
        resources=[sm_pb2.ResourceInfo(name=name, shared_count=shared) for name, shared in resources],
    )

"""SMInfo from probed facts: what this node tells CM it can run (PROTOCOL.md "RuntimeInfo and
ResourceInfo"). Pure: no I/O, so the registration message is a function of its inputs."""

from __future__ import annotations

import uuid
from typing import Sequence

from aos_sm.hw import NodeCapacity, ResourcesResult
from aos_sm.proto.common.v2 import common_pb2
from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

# The reference SM's default instance limit per runtime (PROTOCOL.md).
DEFAULT_MAX_INSTANCES = 256


def runtime_id(runtime_type: str, node_id: str) -> str:
    """Name-based UUID v3 in the OID namespace of "<type>-<nodeID>", as the reference computes it."""
    return str(uuid.uuid3(uuid.NAMESPACE_OID, f"{runtime_type}-{node_id}"))


def build_runtime_info(
    runtime_type: str, node_id: str, capacity: NodeCapacity, max_instances: int = DEFAULT_MAX_INSTANCES
) -> sm_pb2.RuntimeInfo:
    """One runtime's entry: the node's probed capacity (the reference leaves these at 0)."""
    return sm_pb2.RuntimeInfo(
        runtime_id=runtime_id(runtime_type, node_id),
        type=runtime_type,
        max_dmips=capacity.max_dmips,
        allowed_dmips=capacity.allowed_dmips,
        total_ram=capacity.total_ram,
        allowed_ram=capacity.allowed_ram,
        max_instances=max_instances,
        os_info=common_pb2.OSInfo(
            os=capacity.os_name, version=capacity.os_version, features=list(capacity.os_features)
        ),
        arch_info=common_pb2.ArchInfo(architecture=capacity.architecture, variant=capacity.arch_variant),
    )


def build_sm_info(
    node_id: str,
    runtime_types: Sequence[str],
    capacity: NodeCapacity,
    resources: ResourcesResult,
    max_instances: int = DEFAULT_MAX_INSTANCES,
) -> sm_pb2.SMInfo:
    """SMInfo with one RuntimeInfo per runtime type and the valid resources (name, shared_count).

    Resources with problems were already dropped by hw.load_resources; the caller reports them.
    """
    return sm_pb2.SMInfo(
        node_id=node_id,
        runtimes=[build_runtime_info(kind, node_id, capacity, max_instances) for kind in runtime_types],
        resources=[
            sm_pb2.ResourceInfo(name=resource.name, shared_count=resource.shared_count)
            for resource in resources.resources
        ],
    )

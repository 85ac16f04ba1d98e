"""What an UpdateInstances changes (PROTOCOL.md: incremental updates). Pure: no I/O.

Only the instances named in the request are touched. Stops come first, then starts. A start of an
instance that already runs with the same InstanceInfo leaves it running (its status is reported
again); with a different InstanceInfo it is stopped and started again. A start of an instance that
is known but not running (it failed) is a fresh start. An instance in both lists is stopped, then started. A start listed twice keeps
the last entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Sequence, Tuple

from aos_sm.proto.common.v2 import common_pb2
from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

from ..ports import InstanceKey


def info_fingerprint(info: sm_pb2.InstanceInfo) -> bytes:
    return info.SerializeToString(deterministic=True)


@dataclass(frozen=True)
class Plan:
    stop: Tuple[InstanceKey, ...]  # stopped and forgotten (reported ``inactive``)
    restart: Tuple[InstanceKey, ...]  # stopped, then started again with the new InstanceInfo
    start: Tuple[sm_pb2.InstanceInfo, ...]  # started, in request order (restarts included)
    keep: Tuple[InstanceKey, ...]  # already running as requested


def plan_update(
    current: Mapping[InstanceKey, Tuple[bytes, bool]],
    stop_instances: Sequence[common_pb2.InstanceIdent],
    start_instances: Sequence[sm_pb2.InstanceInfo],
) -> Plan:
    """``current`` maps each known instance to (its InstanceInfo fingerprint, whether it runs)."""
    starts: Dict[InstanceKey, sm_pb2.InstanceInfo] = {}
    for info in start_instances:
        key = InstanceKey.from_ident(info.instance)
        starts.pop(key, None)
        starts[key] = info
    stop: List[InstanceKey] = []
    named_in_stop = set()
    for ident in stop_instances:
        key = InstanceKey.from_ident(ident)
        named_in_stop.add(key)
        if key not in starts and key not in stop:
            stop.append(key)
    restart: List[InstanceKey] = []
    start: List[sm_pb2.InstanceInfo] = []
    keep: List[InstanceKey] = []
    for key, info in starts.items():
        known = current.get(key)
        unchanged = known is not None and known[1] and known[0] == info_fingerprint(info)
        if unchanged and key not in named_in_stop:
            keep.append(key)
            continue
        if known is not None:
            restart.append(key)
        start.append(info)
    return Plan(tuple(stop), tuple(restart), tuple(start), tuple(keep))

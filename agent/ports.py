"""The ports through which the gateway hands CM's commands to the node's subsystems.

Each subsystem (launcher, logs, monitoring, network, node config) implements one Protocol; the
gateway depends on nothing else. Subsystems that answer asynchronously (instance updates, logs)
send their replies through the ``Sender`` they were given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol, Sequence, Tuple

from aos_sm.proto.common.v2 import common_pb2
from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2


class Sender(Protocol):
    def send(self, message: sm_pb2.SMOutgoingMessages) -> None: ...


class NodeConfigPort(Protocol):
    def status(self) -> sm_pb2.NodeConfigStatus: ...

    def check(self, node_config: str, version: str) -> sm_pb2.NodeConfigStatus: ...

    def set(self, node_config: str, version: str) -> sm_pb2.NodeConfigStatus: ...


class LauncherPort(Protocol):
    def update_instances(self, request: sm_pb2.UpdateInstances) -> None:
        """Start/stop per PROTOCOL.md; send UpdateInstancesStatus per event, then NodeInstancesStatus."""

    def node_instances_status(self) -> sm_pb2.NodeInstancesStatus:
        """Every instance on the node, for registration."""


class LogsPort(Protocol):
    def system_log(self, request: sm_pb2.SystemLogRequest) -> None: ...

    def instance_log(self, request: sm_pb2.InstanceLogRequest) -> None: ...

    def crash_log(self, request: sm_pb2.InstanceCrashLogRequest) -> None: ...


class MonitoringPort(Protocol):
    def average_monitoring(self) -> sm_pb2.AverageMonitoring: ...


class NetworkPort(Protocol):
    def update_networks(self, request: sm_pb2.UpdateNetworks) -> None: ...


# --- Between subsystems ---------------------------------------------------------------------------
# The launcher (issue 6) owns instances; the monitor (issue 4) and the logs (issue 5) learn of them
# only through the records and Protocols below, so each can be built and tested without the others.


@dataclass(frozen=True)
class InstanceKey:
    """An InstanceIdent as a hashable value (protobuf messages are not hashable)."""

    item_id: str
    subject_id: str
    instance: int
    type: int = 0

    @classmethod
    def from_ident(cls, ident: common_pb2.InstanceIdent) -> "InstanceKey":
        return cls(ident.item_id, ident.subject_id, ident.instance, ident.type)

    def to_ident(self) -> common_pb2.InstanceIdent:
        ident = common_pb2.InstanceIdent(item_id=self.item_id, subject_id=self.subject_id, instance=self.instance)
        # The stubs type the enum field as ItemType; an int is what the wire carries (SERVICE = 0).
        ident.type = self.type  # type: ignore[assignment]
        return ident

    def matches(self, instance_filter: common_pb2.InstanceFilter) -> bool:
        """PROTOCOL.md "Logs": empty item/subject means any; a negative instance means any."""
        return (
            (not instance_filter.item_id or instance_filter.item_id == self.item_id)
            and (not instance_filter.subject_id or instance_filter.subject_id == self.subject_id)
            and (instance_filter.instance < 0 or instance_filter.instance == self.instance)
        )


@dataclass(frozen=True)
class MonitoredInstance:
    """What the monitor needs of a running instance.

    ``cgroup`` is the instance's cgroup path relative to the cgroup root (for example
    ``aos-sm/<name>``): the same relative path under every v1 controller and under the v2 tree.
    ``partitions`` names host directories whose used bytes count as the instance's (storage, state).
    ``instance_id`` is the launcher's id of the instance (its container id): the key under which
    the network manager counts its traffic; empty when unknown (no traffic figures then).
    """

    key: InstanceKey
    runtime_id: str
    cgroup: str
    monitoring_parameters: sm_pb2.MonitoringParameters = field(compare=False)
    partitions: Tuple[Tuple[str, Path], ...] = ()
    instance_id: str = ""


class InstanceMonitorPort(Protocol):
    """The launcher registers each instance once it runs and unregisters it when it stops."""

    def register_instance(self, instance: MonitoredInstance) -> None: ...

    def unregister_instance(self, key: InstanceKey) -> None: ...


@dataclass(frozen=True)
class InstanceLogFile:
    """An instance's output as the launcher records it: ``agent/instancelog.py`` has the format
    (one line per output line, prefixed with the UTC time the agent read it)."""

    key: InstanceKey
    path: Path
    cgroup: str = ""


@dataclass(frozen=True)
class CrashRecord:
    """One run of an instance that ended on its own; its lines are those of ``log_path`` stamped
    within ``[started_at, crashed_at]``. Times are timezone-aware UTC."""

    key: InstanceKey
    log_path: Path
    started_at: datetime
    crashed_at: datetime
    reason: str


class InstanceLogSourcePort(Protocol):
    """The launcher's record of instance output and crashes, read by the logs subsystem."""

    def instance_logs(self) -> Sequence[InstanceLogFile]: ...

    def crashes(self) -> Sequence[CrashRecord]: ...

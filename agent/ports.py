"""The ports through which the gateway hands CM's commands to the node's subsystems.

Each subsystem (launcher, logs, monitoring, network, node config) implements one Protocol; the
gateway depends on nothing else. Subsystems that answer asynchronously (instance updates, logs)
send their replies through the ``Sender`` they were given.
"""

from __future__ import annotations

from typing import Protocol

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

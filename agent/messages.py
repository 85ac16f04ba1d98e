"""Builders for the outgoing messages that several parts of the agent send the same way."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from aos_sm.proto.common.v2 import common_pb2
from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2


def now_timestamp() -> Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp


def core_alert(message: str) -> sm_pb2.SMOutgoingMessages:
    """A CoreAlert from the SM itself, so CM learns of problems on the node."""
    return sm_pb2.SMOutgoingMessages(
        alert=sm_pb2.Alert(
            timestamp=now_timestamp(),
            core_alert=sm_pb2.CoreAlert(core_component="SM", message=message),
        )
    )


def failed_instance_status(info: sm_pb2.InstanceInfo, error: common_pb2.ErrorInfo) -> sm_pb2.InstanceStatus:
    """The status of a start instance that could not be started (PROTOCOL.md: state ``failed``)."""
    return sm_pb2.InstanceStatus(
        instance=info.instance,
        version=info.version,
        runtime_id=info.runtime_id,
        manifest_digest=info.manifest_digest,
        state="failed",
        error=error,
    )


def log_error(correlation_id: str, error: common_pb2.ErrorInfo) -> sm_pb2.SMOutgoingMessages:
    """A log request that failed: one part numbered 0 of 0 with status ``error`` (PROTOCOL.md)."""
    return sm_pb2.SMOutgoingMessages(
        log=sm_pb2.LogData(correlation_id=correlation_id, part=0, part_count=0, status="error", error=error)
    )

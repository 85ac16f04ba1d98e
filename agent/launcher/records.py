"""The launcher's records of instances and runs, and the names it gives containers."""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Optional

from aos_sm.proto.common.v2 import common_pb2
from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

from ..errors import InvalidArgument, error_info_ok
from ..ports import InstanceKey, MonitoredInstance

log = logging.getLogger(__name__)

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def container_id(cgroup_parent: str, key: InstanceKey) -> str:
    """The runtime's container id (and cgroup name) of an instance: stable across restarts, so
    the agent finds its containers again, and prefixed with the cgroup parent so that two agents
    (or test runs) with different parents never share a name."""
    prefix = _SAFE.sub("-", cgroup_parent.strip("/")) or "aos-sm"
    digest = hashlib.sha256(repr((key.item_id, key.subject_id, key.instance, key.type)).encode()).hexdigest()
    return f"{prefix}-{digest[:16]}"


class NullMonitor:
    """An InstanceMonitorPort that watches nothing (until the monitor is wired in)."""

    def register_instance(self, instance: MonitoredInstance) -> None:
        log.debug("monitor: %s registered (no monitor in this build)", instance.key)

    def unregister_instance(self, key: InstanceKey) -> None:
        log.debug("monitor: %s unregistered (no monitor in this build)", key)


@dataclass
class Run:
    """One run of a container: started at ``started_at``; ``stopping`` once the launcher ends it."""

    pid: int
    started_at: datetime
    exited: threading.Event = field(default_factory=threading.Event)
    stopping: bool = False


@dataclass
class Instance:
    info: sm_pb2.InstanceInfo
    container_id: str
    state: str = "activating"
    error: common_pb2.ErrorInfo = field(default_factory=error_info_ok)
    run: Optional[Run] = None

    def status(self) -> sm_pb2.InstanceStatus:
        return sm_pb2.InstanceStatus(
            instance=self.info.instance, version=self.info.version, runtime_id=self.info.runtime_id,
            manifest_digest=self.info.manifest_digest, state=self.state, error=self.error,
            env_vars=[sm_pb2.EnvVarStatus(name=var.name, error=_env_var_error(var.name)) for var in self.info.env_vars],
        )


def _env_var_error(name: str) -> common_pb2.ErrorInfo:
    """Each EnvVarStatus carries an error (PROTOCOL.md); a name the environment cannot hold is one."""
    if not name or "=" in name or "\0" in name:
        return InvalidArgument(f"env var name {name!r} is not valid").to_error_info()
    return error_info_ok()


@dataclass(frozen=True)
class Exit:
    key: InstanceKey
    run: Run
    status: Optional[int]
    when: datetime

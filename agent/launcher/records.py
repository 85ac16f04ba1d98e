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

from ..errors import InvalidArgument, error_info_from_exception, error_info_ok
from ..ports import InstanceKey, MonitoredInstance
from .image import Image
from .lifecycle import InstanceLife, Problem

log = logging.getLogger(__name__)

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def container_prefix(cgroup_parent: str) -> str:
    """What every container id (and network namespace name) of an agent with this cgroup parent
    starts with."""
    return (_SAFE.sub("-", cgroup_parent.strip("/")) or "aos-sm") + "-"


def container_id(cgroup_parent: str, key: InstanceKey) -> str:
    """The runtime's container id (and cgroup name) of an instance: stable across restarts, so
    the agent finds its containers again, and prefixed with the cgroup parent so that two agents
    (or test runs) with different parents never share a name."""
    digest = hashlib.sha256(repr((key.item_id, key.subject_id, key.instance, key.type)).encode()).hexdigest()
    return f"{container_prefix(cgroup_parent)}{digest[:16]}"


class NullMonitor:
    """An InstanceMonitorPort that watches nothing (until the monitor is wired in)."""

    def register_instance(self, instance: MonitoredInstance) -> None:
        log.debug("monitor: %s registered (no monitor in this build)", instance.key)

    def unregister_instance(self, key: InstanceKey) -> None:
        log.debug("monitor: %s unregistered (no monitor in this build)", key)


@dataclass
class Run:
    """One run of a container: its pid, when it started, and ``number``, the life cycle's run."""

    pid: int
    started_at: datetime
    number: int
    exited: threading.Event = field(default_factory=threading.Event)


@dataclass
class Instance:
    """The runner's record of one instance: what CM sent, its life cycle, and what runs now.

    Only the launcher's worker thread feeds ``life``; pool tasks hold ``lock`` while they create or
    halt the container, so a stop never races the start it cancels."""

    info: sm_pb2.InstanceInfo
    container_id: str
    life: InstanceLife = field(default_factory=InstanceLife)
    image: Optional[Image] = None
    run: Optional[Run] = None
    timer: Optional[threading.Timer] = None
    exit_when: Optional[datetime] = None
    attach_run: int = -1  # the run whose Attach effect the next create carries out
    lock: threading.Lock = field(default_factory=threading.Lock)

    def status(self) -> sm_pb2.InstanceStatus:
        return instance_status(self.info, self.life.wire_state, self.life.problem)


def instance_status(info: sm_pb2.InstanceInfo, state: str, problem: Optional[Problem]) -> sm_pb2.InstanceStatus:
    """The one status builder: every InstanceStatus the launcher sends is made here."""
    error = error_info_ok() if problem is None else common_pb2.ErrorInfo(
        aos_code=problem.aos_code, exit_code=problem.exit_code, message=problem.message)
    return sm_pb2.InstanceStatus(
        instance=info.instance, version=info.version, runtime_id=info.runtime_id,
        manifest_digest=info.manifest_digest, state=state, error=error,
        env_vars=[sm_pb2.EnvVarStatus(name=var.name, error=_env_var_error(var.name)) for var in info.env_vars],
    )


def problem_of(err: BaseException) -> Problem:
    """The life cycle's Problem for any exception (through the agent's one ErrorInfo translation)."""
    info = error_info_from_exception(err)
    return Problem(info.aos_code, info.message, info.exit_code)


def _env_var_error(name: str) -> common_pb2.ErrorInfo:
    """Each EnvVarStatus carries an error (PROTOCOL.md); a name the environment cannot hold is one."""
    if not name or "=" in name or "\0" in name:
        return InvalidArgument(f"env var name {name!r} is not valid").to_error_info()
    return error_info_ok()


@dataclass(frozen=True)
class Exit:
    """A run's process ended: its wait status (None when not our child) and when."""

    key: InstanceKey
    run: Run
    status: Optional[int]
    when: datetime

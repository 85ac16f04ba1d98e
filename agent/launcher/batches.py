"""The launcher's jobs and its batch bookkeeping (see ``launcher.py`` for the theory of operation).

A batch follows ``plan.plan_update``: its stops run at once; when all are settled, its starts run
at once; when every start is settled, one NodeInstancesStatus with every instance. Whatever fails
midway, every instance of the batch gets its status: none is silently dropped.

:class:`BatchRunner` is the part of :class:`~.launcher.Launcher` that does this; it runs on the
worker thread only, and the launcher supplies the worker's failure policy (``_guarded``,
``_fault``) and its count of work in progress (``_count``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass, field
from typing import Deque, Dict, List, Optional, Set, Tuple, Union

from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

from ..errors import AosError
from ..messages import core_alert
from ..ports import InstanceKey, Sender
from .containers import Containers
from .lifecycle import SETTLED, Event, Faulted, InstanceLife, Phase, StartRequested, StopRequested, TtlExpired
from .plan import info_fingerprint, plan_update
from .tasks import OfflineTtl, Pool
from .records import Exit, Instance, instance_status, problem_of
from .store import LauncherStore, StoreError

# The runner's one logger, whichever of its modules logs: log lines name "...launcher.launcher".
log = logging.getLogger(__name__.rpartition(".")[0] + ".launcher")

Out = sm_pb2.SMOutgoingMessages


@dataclass(frozen=True)
class Post:
    key: InstanceKey
    event: Event


@dataclass(frozen=True)
class Cloud:
    connected: bool
    at: float


@dataclass(frozen=True)
class Batch:
    """A unit of work that ends with one NodeInstancesStatus: CM's UpdateInstances, or the restore
    of stored instances after an agent restart."""

    request: Optional[sm_pb2.UpdateInstances] = None
    restore: Tuple[InstanceKey, ...] = ()


@dataclass
class Progress:
    batch: Batch
    starts: Tuple[sm_pb2.InstanceInfo, ...] = ()
    phase: str = "stop"
    waiting: Set[InstanceKey] = field(default_factory=set)


Job = Union[Batch, Post, Exit, Cloud, str]


class BatchRunner:
    """Batches in order, one at a time, and the statuses they report. The launcher's state it
    uses is declared here; :class:`~.launcher.Launcher` sets it up."""

    _sender: Sender
    _store: LauncherStore
    _containers: Containers
    _lock: threading.Lock
    _instances: Dict[InstanceKey, Instance]
    _batches: Deque[Batch]
    _progress: Optional[Progress]
    _ttl: OfflineTtl
    _image_ttl: float
    _pulls: Pool

    # --- what the launcher's worker provides

    def _guarded(self, key: InstanceKey, event: Event) -> None:
        raise NotImplementedError

    def _fault(self, key: InstanceKey, err: BaseException) -> None:
        raise NotImplementedError

    def _count(self, change: int) -> None:
        raise NotImplementedError

    # --- statuses

    def node_instances_status(self) -> sm_pb2.NodeInstancesStatus:
        with self._lock:
            return sm_pb2.NodeInstancesStatus(instances=[i.status() for i in self._instances.values()])

    def _send_status(self, instance: Instance) -> None:
        with self._lock:
            status = instance.status()
        self._sender.send(Out(update_instances_status=sm_pb2.UpdateInstancesStatus(instances=[status])))

    # --- batches

    def _advance(self) -> None:
        """Move the current batch on (stops, then starts, then the NodeInstancesStatus)."""
        while True:
            progress = self._progress
            if progress is None:
                if not self._batches:
                    return
                self._begin(self._batches.popleft())
                continue
            progress.waiting = {key for key in progress.waiting if not self._settled(key)}
            if progress.waiting:
                return
            if progress.phase == "stop":
                progress.phase = "start"
                self._start_phase(progress)
                continue
            self._progress = None
            self._finish(progress.batch)

    def _settled(self, key: InstanceKey) -> bool:
        instance = self._instances.get(key)
        return instance is None or instance.life.phase in SETTLED

    def _begin(self, batch: Batch) -> None:
        progress = Progress(batch)
        self._progress = progress
        stops: List[Tuple[InstanceKey, bool]] = []
        if batch.request is not None:
            # Until the plan is made, the request's own lists are what a failure must account for.
            progress.starts = tuple(batch.request.start_instances)
            current = {key: (info_fingerprint(i.info), i.life.phase in (Phase.Confirming, Phase.Active))
                       for key, i in self._instances.items()}
            plan = plan_update(current, batch.request.stop_instances, batch.request.start_instances)
            progress.starts = plan.start
            stops = [(key, True) for key in plan.stop] + [(key, False) for key in plan.restart]
            for key in plan.keep:
                self._send_status(self._instances[key])
        for key, forget in stops:
            if key not in self._instances:
                # Not known here (a stop repeated, or CM's view is older): it is not running.
                self._store.remove_instance(key)
                unknown = instance_status(sm_pb2.InstanceInfo(instance=key.to_ident()), "inactive", None)
                self._sender.send(Out(update_instances_status=sm_pb2.UpdateInstancesStatus(instances=[unknown])))
                continue
            progress.waiting.add(key)
            self._guarded(key, StopRequested(forget=forget))

    def _start_phase(self, progress: Progress) -> None:
        keys: List[InstanceKey] = []
        for info in progress.starts:
            key = InstanceKey.from_ident(info.instance)
            old = self._instances.get(key)
            if old is not None and old.timer is not None:
                old.timer.cancel()
            life = InstanceLife(first_run=old.life.run if old is not None else 0)
            with self._lock:
                self._instances[key] = Instance(info, self._containers.container_id(key), life)
            keys.append(key)
        keys += list(progress.batch.restore)
        progress.waiting.update(keys)
        try:
            # One transaction for the batch, before anything starts: an instance the store cannot
            # remember would not come back after a reboot, so none starts without it.
            self._store.put_instances([(key, self._instances[key].info, self._instances[key].container_id)
                                       for key in keys if key in self._instances])
        except StoreError as err:
            log.error("%s", err)
            for key in keys:
                self._guarded(key, Faulted(problem_of(err)))
            return
        for key in keys:
            instance = self._instances.get(key)
            if instance is None:
                continue
            if instance.life.phase is Phase.Idle and self._ttl.expired(instance.life.policy.offline_ttl):
                self._guarded(key, TtlExpired())  # restored, but offline longer than its TTL
            else:
                self._guarded(key, StartRequested())

    def _finish(self, batch: Batch) -> None:
        if batch.request is not None or batch.restore:
            self._sender.send(Out(node_instances_status=self.node_instances_status()))
        self._count(-1)
        try:
            self._collect_garbage()
        except AosError as err:
            log.error("garbage collection: %s", err)

    def _fail_batch(self, err: BaseException) -> None:
        """A job broke while a batch ran: whatever of the batch is not settled fails with why, so
        that the batch ends and CM gets its NodeInstancesStatus."""
        progress = self._progress
        if progress is None:
            return
        if progress.phase == "stop" and progress.batch.request is not None:
            # Stops not under way get their status as it is (inactive when unknown here).
            for ident in progress.batch.request.stop_instances:
                key = InstanceKey.from_ident(ident)
                if key in progress.waiting:
                    continue
                known = self._instances.get(key)
                status = known.status() if known is not None else instance_status(
                    sm_pb2.InstanceInfo(instance=ident), "inactive", None)
                self._sender.send(Out(update_instances_status=sm_pb2.UpdateInstancesStatus(instances=[status])))
        if progress.phase == "stop":
            progress.phase = "start"
            pending = list(progress.starts)
            progress.starts = ()
            for info in pending:
                key = InstanceKey.from_ident(info.instance)
                old = self._instances.get(key)
                life = InstanceLife(first_run=old.life.run if old is not None else 0)
                with self._lock:
                    self._instances[key] = Instance(info, self._containers.container_id(key), life)
                progress.waiting.add(key)
        for key in list(progress.waiting):
            with contextlib.suppress(Exception):
                self._fault(key, err)
            if not self._settled(key):
                progress.waiting.discard(key)  # still running on its own: it reports when it settles
        with contextlib.suppress(Exception):
            self._advance()

    def _images_in_use(self) -> Set[str]:
        """The images desired instances use (any thread): never evicted nor removed."""
        with self._lock:
            return {i.info.manifest_digest for i in self._instances.values()}

    def _collect_garbage(self, *, verify: bool = False) -> None:
        for problem in self._containers.collect_garbage(self._images_in_use(), self._image_ttl, verify=verify):
            self._sender.send(core_alert(problem))

    def _sweep_image_store(self) -> None:
        """The periodic sweep, on a pool thread: the removal policy and the layers re-verified."""
        try:
            self._collect_garbage(verify=True)
        except AosError as err:
            log.error("image store sweep: %s", err)
        finally:
            self._count(-1)

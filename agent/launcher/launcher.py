"""The launcher: the runner of the instance life cycle (``lifecycle.py``).

Theory of operation:
- Every instance has an :class:`~.lifecycle.InstanceLife`, the pure state machine that decides;
  this module only carries out its effects (runc, files, timers, the monitor, messages to CM) and
  feeds back what happened as events.
- One worker thread owns the lives: it alone feeds them, taking jobs in order from one queue:
  CM's batches, outcomes posted by pool tasks, timers, process exits, cloud status changes.
- Effects that block (pull, create, halt; ``containers.py`` does them) run in two bounded pools,
  one for downloads and one for creates and stops, and post their outcome as an event: the worker
  never waits on a container, and one slow image pull delays nobody else.
- A batch follows ``plan.plan_update``: its stops run at once; when all are settled, its starts
  run at once; when every start is settled (``active``, ``failed``, or crashed), one
  NodeInstancesStatus with every instance. A batch that arrives meanwhile waits its turn; exits
  and timers are handled at once. Whatever fails midway, every instance of the batch gets its
  status (``Faulted``): none is silently dropped.
- Desired instances are written to the SQLite store before they start, so an agent restart or a
  reboot brings them back without CM: ``start`` adopts containers that still run (their output
  FIFO is reopened, see ``output.py``) and starts the others again on the worker.
- Offline TTL: the cloud's absence is an :class:`~.lifecycle.OfflineClock` kept in the store;
  instances whose item config sets ``offlineTTL`` are stopped once it passes (one timer, to the
  nearest deadline).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import (Callable, Deque, Dict, List, Mapping, Optional, Sequence, Set, Tuple, Union)

from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

from ..errors import AosError, ResourceUnavailable
from ..messages import core_alert, now_timestamp
from ..ports import CrashRecord, InstanceKey, InstanceLogFile, InstanceMonitorPort, Sender
from .bundle import CpuCapacity
from .containers import Containers
from .image import Image, Resolver
from .lifecycle import (SETTLED, Adopted, CancelTimer, Create, Effect, Event, ExitStatus, Exited, Faulted,
                        Forget, Halt, Ignored, ImageReady, InstanceLife, LaunchFailed, LifecycleError,
                        OfflineClock, Phase, ProcessRunning, Pull, Reap, Report, RunPolicy,
                        StartRequested, StartTimer, StopFailed, Stopped, StopRequested, TtlExpired, Unwatch,
                        Watch)
from .output import exit_status, record_output, set_subreaper
from .plan import info_fingerprint, plan_update
from .records import Exit, Instance, Run, instance_status, problem_of
from .resources import ResourceSource
from .store import LauncherStore, StoreError

log = logging.getLogger(__name__)

Out = sm_pb2.SMOutgoingMessages
PolicyOf = Callable[[Image], RunPolicy]
Observer = Callable[[InstanceKey, Phase], None]

# Phases whose container may run, or is about to: what an expired offline TTL stops. Pulling is
# not among them (the item config, hence the TTL, is not known yet): ImageReady is checked as it
# arrives (``_expired_on_arrival``).
_TTL_PHASES = frozenset({Phase.Creating, Phase.Confirming, Phase.Active, Phase.Backoff})


def policy_from_item_config(image: Image) -> RunPolicy:
    """The run policy an image's item config asks for (INSTANCES.md, runParameters, offlineTTL)."""
    item = image.item_config
    run = item.run_parameters
    return RunPolicy(start_interval=run.start_interval, start_burst=run.start_burst,
                     restart_interval=run.restart_interval, offline_ttl=item.offline_ttl)


@dataclass(frozen=True)
class _Post:
    key: InstanceKey
    event: Event


@dataclass(frozen=True)
class _Cloud:
    connected: bool
    at: float


@dataclass(frozen=True)
class _Batch:
    """A unit of work that ends with one NodeInstancesStatus: CM's UpdateInstances, or the restore
    of stored instances after an agent restart."""

    request: Optional[sm_pb2.UpdateInstances] = None
    restore: Tuple[InstanceKey, ...] = ()


@dataclass
class _Progress:
    batch: _Batch
    starts: Tuple[sm_pb2.InstanceInfo, ...] = ()
    phase: str = "stop"
    waiting: Set[InstanceKey] = field(default_factory=set)


_Job = Union[_Batch, _Post, Exit, _Cloud, str]


class _Pool:
    """A bounded pool of daemon threads, started on demand (a board that runs two instances never
    pays for 16 idle threads). Why not concurrent.futures: the interpreter joins its workers at
    exit, so a download hanging on a dead network would hold up the agent's exit. The on-demand
    rule is ThreadPoolExecutor's: a task goes to an idle thread if one is waiting, else a new
    thread starts while fewer than ``size`` exist."""

    def __init__(self, size: int, name: str) -> None:
        self._size = max(1, size)
        self._name = name
        self._tasks: "queue.Queue[Optional[Callable[[], None]]]" = queue.Queue()
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._threads: List[threading.Thread] = []

    def submit(self, task: Callable[[], None]) -> None:
        self._tasks.put(task)
        if self._idle.acquire(blocking=False):
            return  # a waiting thread takes it
        with self._lock:
            if len(self._threads) < self._size:
                thread = threading.Thread(target=self._serve, name=f"{self._name}-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()

    def shutdown(self) -> None:
        """Drop the tasks not started yet and let the threads end; waits for none."""
        with contextlib.suppress(queue.Empty):
            while True:
                self._tasks.get_nowait()
        with self._lock:
            for _ in self._threads:
                self._tasks.put(None)

    def _serve(self) -> None:
        while True:
            task = self._tasks.get()
            if task is None:
                return
            try:
                task()
            except Exception:  # tasks report their own failures; this one is a bug
                log.exception("launcher task failed")
            self._idle.release()


class Launcher:
    """Implements LauncherPort and InstanceLogSourcePort."""

    def __init__(
        self,
        *,
        sender: Sender,
        working_dir: Path,
        runtimes: Mapping[str, Tuple[str, str]],
        resolver: Resolver,
        monitor: InstanceMonitorPort,
        cgroup_parent: str = "aos-sm",
        image_ttl: float = 24 * 3600.0,
        stop_timeout: float = 10.0,
        parallel: int = 8,
        policy_of: PolicyOf = policy_from_item_config,
        observer: Optional[Observer] = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        resources: Optional[ResourceSource] = None,
        cpu: Optional[CpuCapacity] = None,
    ) -> None:
        """``runtimes`` maps runtime_id -> (type, binary) for the runtimes this node can run;
        ``parallel`` bounds the pulls, creates and stops running at once; ``observer`` hears
        every phase an instance enters (benchmarks); ``resources`` grants the item configs'
        resources (none without it); ``cpu`` is the node capacity a ``cpuDMIPSLimit`` is computed
        from (such items fail without it)."""
        self._sender = sender
        root = working_dir / "launcher"
        root.mkdir(parents=True, exist_ok=True)
        self._resolver = resolver
        self._monitor = monitor
        self._image_ttl = image_ttl
        self._policy_of = policy_of
        self._observer = observer
        self._clock = clock
        self._monotonic = monotonic
        self._store = LauncherStore(root / "launcher.db")
        self._containers = Containers(root=root, runtimes=runtimes, store=self._store,
                                      cgroup_parent=cgroup_parent.strip("/"), stop_timeout=stop_timeout,
                                      clock=clock, resources=resources, cpu=cpu)
        # Two pools: downloads may hang for minutes on a bad network, and must never hold up the
        # creates and stops of other instances.
        self._pulls = _Pool(parallel, "launcher-pull")
        self._runs = _Pool(parallel, "launcher-run")
        self._lock = threading.Lock()
        self._instances: Dict[InstanceKey, Instance] = {}
        self._jobs: "queue.Queue[Optional[_Job]]" = queue.Queue()
        self._worker: Optional[threading.Thread] = None
        self._idle = threading.Condition()
        self._busy = 0
        self._batches: Deque[_Batch] = collections.deque()
        self._progress: Optional[_Progress] = None
        self._offline = OfflineClock(None)
        self._ttl_timer: Optional[threading.Timer] = None
        self._ttl_deadline: Optional[float] = None
        self.subreaper = False

    # --- LauncherPort

    def update_instances(self, request: sm_pb2.UpdateInstances) -> None:
        self._enqueue(_Batch(request=request))

    def node_instances_status(self) -> sm_pb2.NodeInstancesStatus:
        with self._lock:
            return sm_pb2.NodeInstancesStatus(instances=[i.status() for i in self._instances.values()])

    # --- InstanceLogSourcePort

    def instance_logs(self) -> Sequence[InstanceLogFile]:
        with self._lock:
            return [InstanceLogFile(key, self._containers.log_path(i.container_id),
                                    self._containers.cgroup(i.container_id)) for key, i in self._instances.items()]

    def crashes(self) -> Sequence[CrashRecord]:
        return self._store.crashes()

    # --- the cloud connection (CloudConnection listener)

    def on_cloud_connection(self, connected: bool) -> None:
        self._enqueue(_Cloud(connected, self._clock()))

    # --- life cycle of the launcher itself

    def start(self) -> None:
        """Bring back the stored instances (adopt, or queue their start), then start the worker."""
        self.subreaper = set_subreaper(True)
        if self._store.problem:
            self._sender.send(core_alert(self._store.problem))
        self._offline = self._load_offline_clock()
        try:
            stored = self._store.instances()
        except StoreError as err:
            log.error("%s", err)
            self._sender.send(core_alert(str(err)))
            stored = {}
        self._containers.remove_strays({container for _, container in stored.values()})
        restore: List[InstanceKey] = []
        for key, (info, container) in stored.items():
            instance = Instance(info, container)
            instance.life = InstanceLife(self._local_policy(instance))
            with self._lock:
                self._instances[key] = instance
            if not self._adopt(key, instance):
                restore.append(key)
        self._check_ttl()
        if restore:
            self._enqueue(_Batch(restore=tuple(restore)))
        self._enqueue("gc")
        self._worker = threading.Thread(target=self._work, name="launcher", daemon=True)
        self._worker.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the worker; instances keep running (the next start adopts them)."""
        self._jobs.put(None)
        if self._worker is not None:
            self._worker.join(timeout)
        self._worker = None
        with self._lock:
            instances = list(self._instances.values())
        for instance in instances:
            if instance.timer is not None:
                instance.timer.cancel()
        if self._ttl_timer is not None:
            self._ttl_timer.cancel()
        self._pulls.shutdown()
        self._runs.shutdown()
        if self.subreaper:
            self.subreaper = not set_subreaper(False)

    def stop_all_instances(self, timeout: float = 60.0) -> None:
        """Stop every instance now (tests, decommissioning); the store forgets them."""
        if self._worker is not None and self._worker.is_alive():
            self._enqueue("stop-all")
            with self._idle:
                self._idle.wait_for(lambda: not self._instances, timeout)
            return
        # No worker (it was stopped): end the containers directly, as an agent that stops would.
        with self._lock:
            instances, self._instances = dict(self._instances), {}
        for key, instance in instances.items():
            if instance.timer is not None:
                instance.timer.cancel()
            with contextlib.suppress(AosError):
                self._containers.halt(instance, None)
                self._store.remove_instance(key)

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until every queued job, batch and task is done (tests, benchmarks)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)

    # --- the worker

    def _enqueue(self, job: _Job) -> None:
        self._count(+1)
        self._jobs.put(job)

    def _count(self, change: int) -> None:
        with self._idle:
            self._busy += change
            self._idle.notify_all()

    def _post(self, key: InstanceKey, event: Event) -> None:
        """From any thread: feed ``event`` to the instance's life on the worker."""
        self._enqueue(_Post(key, event))

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                self._do(job)
                self._advance()
                self._check_ttl()
            except Exception as err:  # the worker must outlive any one job; instances fail alone (_guarded)
                log.exception("launcher job failed")
                self._sender.send(core_alert(f"launcher: {err}"))
                self._fail_batch(err)
            finally:
                self._count(-1)

    def _do(self, job: _Job) -> None:
        if isinstance(job, _Post):
            if isinstance(job.event, ImageReady) and self._expired_on_arrival(job.key, job.event):
                # The item config just read says it may not run this long offline: never create it.
                self._guarded(job.key, TtlExpired())
            else:
                self._guarded(job.key, job.event)
        elif isinstance(job, Exit):
            self._exited(job)
        elif isinstance(job, _Batch):
            self._count(+1)  # until the batch's NodeInstancesStatus is out
            self._batches.append(job)
        elif isinstance(job, _Cloud):
            self._cloud_changed(job)
        elif job == "stop-all":
            for key in list(self._instances):
                self._guarded(key, StopRequested(forget=True))
        elif job == "gc":
            self._collect_garbage()
        # "ttl": the check after every job does it.

    def _feed(self, key: InstanceKey, event: Event) -> None:
        instance = self._instances.get(key)
        if instance is None:
            log.debug("%s for %s: no such instance any more", type(event).__name__, key)
            return
        with self._lock:  # readers never see a half-made transition
            effects = instance.life.handle(event)
        for effect in effects:
            self._carry_out(key, instance, effect)
        if self._observer is not None:
            self._observer(key, instance.life.phase)

    def _guarded(self, key: InstanceKey, event: Event) -> None:
        """Feed ``event``; if that fails, the instance fails with why (the one failure policy)."""
        try:
            self._feed(key, event)
        except Exception as err:
            log.exception("instance %s: %s failed", key, type(event).__name__)
            self._sender.send(core_alert(f"launcher: instance {key.item_id}/{key.instance}: {err}"))
            self._fault(key, err)

    def _fault(self, key: InstanceKey, err: BaseException) -> None:
        instance = self._instances.get(key)
        if instance is not None and instance.life.phase in (Phase.Idle, Phase.Pulling, Phase.Creating,
                                                            Phase.Stopping):
            with contextlib.suppress(LifecycleError):
                self._feed(key, Faulted(problem_of(err)))

    def _carry_out(self, key: InstanceKey, instance: Instance, effect: Effect) -> None:
        if isinstance(effect, Report):
            self._send_status(instance)
        elif isinstance(effect, Pull):
            self._submit(self._pulls, self._pull, key, instance, effect.run)
        elif isinstance(effect, Create):
            self._submit(self._runs, self._create, key, instance, effect.run)
        elif isinstance(effect, Halt):
            self._submit(self._runs, self._halt, key, instance, effect.run)
        elif isinstance(effect, StartTimer):
            self._arm(key, instance, effect)
        elif isinstance(effect, CancelTimer):
            if instance.timer is not None:
                instance.timer.cancel()
                instance.timer = None
        elif isinstance(effect, Watch):
            self._monitor.register_instance(self._containers.monitored(key, instance))
        elif isinstance(effect, Unwatch):
            self._monitor.unregister_instance(key)
        elif isinstance(effect, Reap):
            self._reap(key, instance, effect.status)
        elif isinstance(effect, Forget):
            with self._lock:
                self._instances.pop(key, None)
            self._store.remove_instance(key)
        elif isinstance(effect, Ignored):
            log.debug("instance %s: %s ignored: %s", key, type(effect.event).__name__, effect.reason)

    def _submit(self, pool: _Pool, task: Callable[[InstanceKey, Instance, int], None], key: InstanceKey,
                instance: Instance, run: int) -> None:
        self._count(+1)

        def guarded() -> None:
            try:
                task(key, instance, run)
            finally:
                self._count(-1)

        pool.submit(guarded)

    def _arm(self, key: InstanceKey, instance: Instance, effect: StartTimer) -> None:
        if instance.timer is not None:
            instance.timer.cancel()
        timer = threading.Timer(effect.seconds, self._post, (key, effect.fire))
        timer.daemon = True
        timer.start()
        instance.timer = timer

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

    def _begin(self, batch: _Batch) -> None:
        progress = _Progress(batch)
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

    def _start_phase(self, progress: _Progress) -> None:
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
            if instance.life.phase is Phase.Idle and self._offline.expired(instance.life.policy.offline_ttl,
                                                                           self._clock()):
                self._guarded(key, TtlExpired())  # restored, but offline longer than its TTL
            else:
                self._guarded(key, StartRequested())

    def _finish(self, batch: _Batch) -> None:
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

    # --- the offline TTL

    def _load_offline_clock(self) -> OfflineClock:
        now = self._clock()
        try:
            # Not known to be connected at agent start: the clock runs from now, unless it ran
            # already before the restart.
            clock = OfflineClock(self._store.offline_since()).on_cloud(False, now)
            self._store.set_offline_since(clock.since)
        except StoreError as err:
            log.error("%s", err)
            return OfflineClock(now)
        return clock

    def _cloud_changed(self, change: _Cloud) -> None:
        clock = self._offline.on_cloud(change.connected, change.at)
        if clock != self._offline:
            self._offline = clock
            self._store.set_offline_since(clock.since)

    def _expired_on_arrival(self, key: InstanceKey, event: ImageReady) -> bool:
        instance = self._instances.get(key)
        return (instance is not None and instance.life.run == event.run
                and self._offline.expired(event.policy.offline_ttl, self._clock()))

    def _check_ttl(self) -> None:
        """Stop what outlived its TTL; arm one timer to the nearest remaining deadline."""
        now = self._clock()
        nearest: Optional[float] = None
        for key, instance in list(self._instances.items()):
            if instance.life.phase not in _TTL_PHASES:
                continue
            deadline = self._offline.deadline(instance.life.policy.offline_ttl)
            if deadline is None:
                continue
            if now >= deadline:
                log.info("instance %s: cloud away longer than its offline TTL: stopped", key)
                self._guarded(key, TtlExpired())
            elif nearest is None or deadline < nearest:
                nearest = deadline
        if nearest == self._ttl_deadline:
            return
        if self._ttl_timer is not None:
            self._ttl_timer.cancel()
            self._ttl_timer = None
        self._ttl_deadline = nearest
        if nearest is not None:
            self._ttl_timer = threading.Timer(max(0.0, nearest - now), self._enqueue, ("ttl",))
            self._ttl_timer.daemon = True
            self._ttl_timer.start()

    # --- pool tasks: each ends by posting exactly one event

    def _pull(self, key: InstanceKey, instance: Instance, run: int) -> None:
        try:
            self._containers.runtime(instance)  # no pull for an instance this node cannot run
            image = self._containers.pull(instance.info.manifest_digest, self._resolver)
            policy = self._policy_of(image)
            instance.image = image
            self._post(key, ImageReady(run, policy))
        except Exception as err:
            log.warning("instance %s: pull failed: %s", key, err)
            self._post(key, LaunchFailed(run, problem_of(err)))

    def _create(self, key: InstanceKey, instance: Instance, run: int) -> None:
        with instance.lock:
            try:
                image = instance.image or self._containers.pull(instance.info.manifest_digest, self._resolver)
                reader, pid = self._containers.create(instance, image)
            except Exception as err:
                log.warning("instance %s failed to start: %s", key, err)
                if isinstance(err, ResourceUnavailable):
                    self._sender.send(Out(alert=sm_pb2.Alert(timestamp=now_timestamp(), resource_allocate_alert=(
                        sm_pb2.ResourceAllocateAlert(instance=instance.info.instance, resource=err.resource,
                                                     message=err.message)))))
                self._post(key, LaunchFailed(run, problem_of(err)))
                return
            # ProcessRunning is posted before the output thread starts, so an exit always follows it.
            self._post(key, ProcessRunning(run, self._monotonic()))
            self._follow(key, instance, reader, pid, run)

    def _halt(self, key: InstanceKey, instance: Instance, run: int) -> None:
        with instance.lock:
            current = instance.run
            try:
                self._containers.halt(instance, current)
            except Exception as err:
                log.error("stopping %s: %s", key, err)
                self._post(key, StopFailed(run, problem_of(err)))
                return
            finally:
                if current is not None:
                    self._containers.touch_image(instance.info.manifest_digest)
            instance.run = None
        self._post(key, Stopped(run))

    def _follow(self, key: InstanceKey, instance: Instance, reader: int, pid: int, run_number: int,
                started_at: Optional[datetime] = None) -> None:
        run = Run(pid, started_at or datetime.now(timezone.utc), run_number)
        instance.run = run

        def on_exit(status: Optional[int], when: datetime) -> None:
            run.exited.set()
            self._enqueue(Exit(key, run, status, when))

        record_output(reader, self._containers.log_path(instance.container_id), pid, on_exit)

    # --- exits

    def _exited(self, event: Exit) -> None:
        instance = self._instances.get(event.key)
        if instance is None or instance.run is not event.run:
            return  # stopped by us, or replaced: the life cycle already moved on
        instance.exit_when = event.when
        self._guarded(event.key, Exited(event.run.number, self._monotonic(), exit_status(event.status)))

    def _reap(self, key: InstanceKey, instance: Instance, status: ExitStatus) -> None:
        """The process ended on its own: remove its container, keep a crash record, alert CM."""
        run = instance.run
        instance.run = None
        self._containers.remove(instance)
        when = instance.exit_when or datetime.now(timezone.utc)
        if run is not None:
            try:
                self._store.add_crash(CrashRecord(key, self._containers.log_path(instance.container_id),
                                                  run.started_at, when, status.description))
            except StoreError as err:
                log.error("%s", err)
        self._containers.touch_image(instance.info.manifest_digest)
        log.warning("instance %s %s", key, status.description)
        self._sender.send(Out(alert=sm_pb2.Alert(
            timestamp=now_timestamp(),
            instance_alert=sm_pb2.InstanceAlert(instance=instance.info.instance, service_version=instance.info.version,
                                                message=f"instance {status.description}"),
        )))

    # --- restore after a restart

    def _local_policy(self, instance: Instance) -> RunPolicy:
        """The run policy of an instance whose image is already here (no download after a restart)."""
        try:
            instance.image = self._containers.local_image(instance.info.manifest_digest)
            return self._policy_of(instance.image)
        except Exception as err:
            log.info("instance %s: no usable local image (%s): the default run policy until pulled",
                     instance.info.instance.item_id, err)
            return RunPolicy()

    def _adopt(self, key: InstanceKey, instance: Instance) -> bool:
        """True when the instance's container still runs and its output FIFO could be reopened."""
        running = self._containers.still_running(instance)
        if running is None:
            return False
        reader, state = running
        self._feed(key, Adopted(instance.life.policy, self._monotonic()))
        # The run began when the container was created, not when we adopted it: a crash record's
        # time range must cover the lines it wrote before the agent came back.
        self._follow(key, instance, reader, state.pid, instance.life.run, started_at=state.created)
        log.info("instance %s adopted: container %s still runs (pid %d)", key, instance.container_id, state.pid)
        return True

    def _collect_garbage(self) -> None:
        with self._lock:
            in_use = {i.info.manifest_digest for i in self._instances.values()}
        self._containers.collect_garbage(in_use, self._image_ttl)

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
- Parts: ``tasks.py`` (the pools, the blocking tasks they run, the offline-TTL clock and timer) and
  ``batches.py`` (the worker's jobs, the batch bookkeeping and the statuses).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Callable, List, Mapping, Optional, Sequence, Tuple

from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

from ..errors import AosError
from ..messages import core_alert
from ..network.instance import InstanceNetworkPort
from ..ports import CrashRecord, InstanceKey, InstanceLogFile, InstanceMonitorPort, Sender
from .batches import Batch, BatchRunner, Cloud, Job, Post
from .bundle import CpuCapacity
from .containers import Containers, EtcFilesSource, InstanceSecrets
from .image import Resolver
from .lifecycle import (Adopted, Attach, CancelTimer, Create, Detach, Effect, Event, Exited, Faulted, Forget, Halt, Ignored,
                        ImageReady, InstanceLife, LifecycleError, Phase, Pull, Reap, Report, StartTimer,
                        StopRequested, TtlExpired, Unwatch, Watch)
from .output import exit_status, set_subreaper
from .tasks import OfflineTtl, PolicyOf, Pool, Tasks, policy_from_item_config
from .records import Exit, Instance, problem_of
from .resources import ResourceSource
from .rootfs import DEFAULT_HOST_DIRS
from .store import LauncherStore, StoreError

log = logging.getLogger(__name__)

Observer = Callable[[InstanceKey, Phase], None]


class Launcher(BatchRunner):
    """Implements LauncherPort and InstanceLogSourcePort. The batch bookkeeping and the statuses
    are :class:`~.batches.BatchRunner`'s; the blocking effects are :class:`~.pool.Tasks`'."""

    def __init__(
        self,
        *,
        sender: Sender,
        working_dir: Path,
        runtimes: Mapping[str, Tuple[str, str]],
        resolver: Resolver,
        monitor: InstanceMonitorPort,
        cgroup_parent: str = "aos-sm",
        image_ttl: float = 30 * 24 * 3600.0,
        images_part_limit: Optional[float] = None,
        sweep_period: float = 24 * 3600.0,
        stop_timeout: float = 10.0,
        parallel: int = 8,
        policy_of: PolicyOf = policy_from_item_config,
        observer: Optional[Observer] = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        resources: Optional[ResourceSource] = None,
        cpu: Optional[CpuCapacity] = None,
        secrets: Optional[InstanceSecrets] = None,
        storage_dir: Optional[Path] = None,
        state_dir: Optional[Path] = None,
        host_dirs: Sequence[str] = DEFAULT_HOST_DIRS,
        etc_files: Optional[EtcFilesSource] = None,
        network: Optional[InstanceNetworkPort] = None,
    ) -> None:
        """``runtimes`` maps runtime_id -> (type, binary) for the runtimes this node can run;
        ``parallel`` bounds the pulls, creates and stops running at once; ``observer`` hears
        every phase an instance enters (benchmarks); ``resources`` grants the item configs'
        resources (none without it); ``cpu`` is the node capacity a ``cpuDMIPSLimit`` is computed
        from (such items fail without it); ``secrets`` registers the instances whose item config
        has ``permissions`` with IAM and gives them ``AOS_SECRET`` (none without it). ``image_ttl``
        is ``updateItemTTL``; ``images_part_limit`` caps the image store at that percent of its
        partition; every ``sweep_period`` the image store is swept and its layers re-verified
        (``gc.py``); ``storage_dir``/``state_dir`` where CM's storage and state paths are joined
        (default ``<working_dir>/storages`` and ``/states``); ``host_dirs`` the host's top-level
        entries every instance sees (``rootfs.py``); ``etc_files`` gives an instance's ``/etc/hosts``
        and ``/etc/resolv.conf`` (None: the defaults, or the network's); ``network`` gives every run
        its own network namespace (``Attach`` before the container, ``Detach`` once it is gone;
        None: the agent's own)."""
        self._sender = sender
        root = working_dir / "launcher"
        root.mkdir(parents=True, exist_ok=True)
        self._monitor = monitor
        self._image_ttl = image_ttl
        self._sweep_period = sweep_period
        self._next_sweep = monotonic() + sweep_period
        self._observer = observer
        self._clock = clock
        self._monotonic = monotonic
        self._store = LauncherStore(root / "launcher.db")
        self._containers = Containers(root=root, runtimes=runtimes, store=self._store,
                                      cgroup_parent=cgroup_parent.strip("/"), stop_timeout=stop_timeout,
                                      clock=clock, resources=resources, cpu=cpu, in_use=self._images_in_use,
                                      images_part_limit=images_part_limit, secrets=secrets,
                                      storage_dir=storage_dir, state_dir=state_dir, host_dirs=host_dirs,
                                      etc_files=etc_files)
        self._network = network
        self._tasks = Tasks(containers=self._containers, store=self._store, sender=sender, resolver=resolver,
                            policy_of=policy_of, monotonic=monotonic, post=self._post, on_exit=self._enqueue,
                            network=network)
        # Two pools: downloads may hang for minutes on a bad network, and must never hold up the
        # creates and stops of other instances.
        self._pulls = Pool(parallel, "launcher-pull")
        self._runs = Pool(parallel, "launcher-run")
        self._lock = threading.Lock()
        self._instances = {}
        self._jobs: "queue.Queue[Optional[Job]]" = queue.Queue()
        self._worker: Optional[threading.Thread] = None
        self._idle = threading.Condition()
        self._busy = 0
        self._batches = collections.deque()
        self._progress = None
        self._ttl = OfflineTtl(self._store, clock, functools.partial(self._enqueue, "ttl"))
        self.subreaper = False

    # --- LauncherPort

    def update_instances(self, request: sm_pb2.UpdateInstances) -> None:
        self._enqueue(Batch(request=request))

    # --- InstanceLogSourcePort

    def instance_logs(self) -> Sequence[InstanceLogFile]:
        with self._lock:
            return [InstanceLogFile(key, self._containers.log_path(i.container_id),
                                    self._containers.cgroup(i.container_id)) for key, i in self._instances.items()]

    def crashes(self) -> Sequence[CrashRecord]:
        return self._store.crashes()

    # --- the cloud connection (CloudConnection listener)

    def on_cloud_connection(self, connected: bool) -> None:
        self._enqueue(Cloud(connected, self._clock()))

    # --- life cycle of the launcher itself

    def start(self) -> None:
        """Bring back the stored instances (adopt, or queue their start), then start the worker."""
        self.subreaper = set_subreaper(True)
        if self._store.problem:
            self._sender.send(core_alert(self._store.problem))
        self._ttl.load()
        try:
            stored = self._store.instances()
        except StoreError as err:
            log.error("%s", err)
            self._sender.send(core_alert(str(err)))
            stored = {}
        self._containers.remove_strays({container for _, container in stored.values()})
        if self._network is not None:
            # Namespaces, links and chains of instances the store no longer holds go too.
            self._network.keep_only({container for _, container in stored.values()})
        restore: List[InstanceKey] = []
        for key, (info, container) in stored.items():
            instance = Instance(info, container)
            instance.life = InstanceLife(self._tasks.local_policy(instance))
            with self._lock:
                self._instances[key] = instance
            if not self._adopt(key, instance):
                restore.append(key)
        self._check_ttl()
        if restore:
            self._enqueue(Batch(restore=tuple(restore)))
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
        self._ttl.cancel()
        self._pulls.shutdown()
        self._runs.shutdown()
        if not instances:
            try:
                self._containers.release_roots()
            except AosError as err:  # stopping goes on: the next start finds the tmpfs and keeps it
                log.warning("roots tmpfs left mounted: %s", err)
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

    def _enqueue(self, job: Job) -> None:
        self._count(+1)
        self._jobs.put(job)

    def _count(self, change: int) -> None:
        with self._idle:
            self._busy += change
            self._idle.notify_all()

    def _post(self, key: InstanceKey, event: Event) -> None:
        """From any thread: feed ``event`` to the instance's life on the worker."""
        self._enqueue(Post(key, event))

    def _work(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=max(0.0, self._next_sweep - self._monotonic()))
            except queue.Empty:
                self._next_sweep = self._monotonic() + self._sweep_period
                self._enqueue("sweep")
                continue
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

    def _do(self, job: Job) -> None:
        if isinstance(job, Post):
            if isinstance(job.event, ImageReady) and self._expired_on_arrival(job.key, job.event):
                # The item config just read says it may not run this long offline: never create it.
                self._guarded(job.key, TtlExpired())
            else:
                self._guarded(job.key, job.event)
        elif isinstance(job, Exit):
            self._exited(job)
        elif isinstance(job, Batch):
            self._count(+1)  # until the batch's NodeInstancesStatus is out
            self._batches.append(job)
        elif isinstance(job, Cloud):
            self._ttl.cloud_changed(job.connected, job.at)
        elif job == "stop-all":
            for key in list(self._instances):
                self._guarded(key, StopRequested(forget=True))
        elif job == "gc":
            self._collect_garbage()
        elif job == "sweep":
            # Re-hashing every layer takes a while: on a pool thread, never holding up the worker.
            self._count(+1)
            self._pulls.submit(self._sweep_image_store)
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
            self._submit(self._pulls, self._tasks.pull, key, instance, effect.run)
        elif isinstance(effect, Attach):
            instance.attach_run = effect.run  # carried out by the create task, before the container
        elif isinstance(effect, Create):
            self._submit(self._runs, self._tasks.create, key, instance, effect.run)
        elif isinstance(effect, Detach):
            if self._network is not None:
                self._submit(self._runs, self._tasks.detach, key, instance, effect.run)
        elif isinstance(effect, Halt):
            self._submit(self._runs, self._tasks.halt, key, instance, effect.run)
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
            self._tasks.reap(key, instance, effect.status)
        elif isinstance(effect, Forget):
            with self._lock:
                self._instances.pop(key, None)
            self._store.remove_instance(key)
        elif isinstance(effect, Ignored):
            log.debug("instance %s: %s ignored: %s", key, type(effect.event).__name__, effect.reason)

    def _submit(self, pool: Pool, task: Callable[[InstanceKey, Instance, int], None], key: InstanceKey,
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

    # --- the offline TTL

    def _expired_on_arrival(self, key: InstanceKey, event: ImageReady) -> bool:
        instance = self._instances.get(key)
        return (instance is not None and instance.life.run == event.run
                and self._ttl.expired(event.policy.offline_ttl))

    def _check_ttl(self) -> None:
        """Stop what outlived its TTL; arm one timer to the nearest remaining deadline."""
        self._ttl.check(self._instances, lambda key: self._guarded(key, TtlExpired()))

    # --- exits

    def _exited(self, event: Exit) -> None:
        instance = self._instances.get(event.key)
        if instance is None or instance.run is not event.run:
            return  # stopped by us, or replaced: the life cycle already moved on
        instance.exit_when = event.when
        self._guarded(event.key, Exited(event.run.number, self._monotonic(), exit_status(event.status)))

    # --- restore after a restart

    def _adopt(self, key: InstanceKey, instance: Instance) -> bool:
        """True when the instance's container still runs and its output FIFO could be reopened."""
        running = self._containers.still_running(instance)
        if running is None:
            return False
        reader, state = running
        self._feed(key, Adopted(instance.life.policy, self._monotonic()))
        # The run began when the container was created, not when we adopted it: a crash record's
        # time range must cover the lines it wrote before the agent came back.
        self._tasks.follow(key, instance, reader, state.pid, instance.life.run, started_at=state.created)
        log.info("instance %s adopted: container %s still runs (pid %d)", key, instance.container_id, state.pid)
        return True

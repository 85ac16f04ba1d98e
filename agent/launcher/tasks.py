"""What the launcher's worker hands off: the bounded pools and the blocking tasks they run, and the
offline-TTL clock with its one timer (see ``launcher.py`` for the theory of operation).

Every pool task ends by posting exactly one event back to the worker, which alone feeds the
instance lives; the TTL timer only queues a check on the worker.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from datetime import datetime, timezone
from typing import Callable, List, Mapping, Optional, Tuple

from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

from ..errors import ResourceUnavailable
from ..messages import now_timestamp
from ..network.instance import AttachRequest, InstanceNetworkPort, Limits, NetworkParameters
from ..ports import CrashRecord, InstanceKey, Sender
from .bundle import aos_instance_id
from .containers import Containers
from .image import Image, Resolver
from .lifecycle import (Event, ExitStatus, ImageReady, LaunchFailed, OfflineClock, Phase, ProcessRunning, RunPolicy,
                        StopFailed, Stopped)
from .output import record_output
from .records import Exit, Instance, Run, problem_of
from .store import LauncherStore, StoreError

# The runner's one logger, whichever of its modules logs: log lines name "...launcher.launcher".
log = logging.getLogger(__name__.rpartition(".")[0] + ".launcher")

Out = sm_pb2.SMOutgoingMessages
PolicyOf = Callable[[Image], RunPolicy]

# Phases whose container may run, or is about to: what an expired offline TTL stops. Pulling is
# not among them (the item config, hence the TTL, is not known yet): ImageReady is checked as it
# arrives (``Launcher._expired_on_arrival``).
_TTL_PHASES = frozenset({Phase.Creating, Phase.Confirming, Phase.Active, Phase.Backoff})


def policy_from_item_config(image: Image) -> RunPolicy:
    """The run policy an image's item config asks for (INSTANCES.md, runParameters, offlineTTL)."""
    item = image.item_config
    run = item.run_parameters
    return RunPolicy(start_interval=run.start_interval, start_burst=run.start_burst,
                     restart_interval=run.restart_interval, offline_ttl=item.offline_ttl)


def attach_request(instance: Instance, image: Image) -> AttachRequest:
    """What the network manager needs of one instance: its InstanceInfo's network parameters and
    its item config's hostname and traffic quotas."""
    info = instance.info
    params = NetworkParameters.of(info)
    item = image.item_config
    hostname = item.hostname or ""
    names: Tuple[str, ...] = ()
    if params is not None:
        from ..network.dns import instance_names  # noqa: PLC0415 - only networked instances need it

        ident = info.instance
        names = tuple(instance_names(ident.item_id, ident.subject_id, ident.instance, params.network_id, hostname))
    quotas = item.quotas
    return AttachRequest(instance.container_id, instance_id_of(info), params, names, hostname,
                         Limits(quotas.download_limit, quotas.upload_limit, quotas.download_speed, quotas.upload_speed))


def instance_id_of(info: sm_pb2.InstanceInfo) -> str:
    return aos_instance_id(info.instance.item_id, info.instance.subject_id, info.instance.instance)


class Pool:
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


class Tasks:
    """The blocking effects (``containers.py`` does the work). ``pull``, ``create`` and ``halt``
    run on a pool and each ends by posting exactly one event; ``reap`` runs on the worker."""

    def __init__(self, *, containers: Containers, store: LauncherStore, sender: Sender, resolver: Resolver,
                 policy_of: PolicyOf, monotonic: Callable[[], float],
                 post: Callable[[InstanceKey, Event], None], on_exit: Callable[[Exit], None],
                 network: Optional[InstanceNetworkPort] = None) -> None:
        """``post`` feeds an event to an instance's life on the worker; ``on_exit`` queues a
        process exit there; ``network`` gives each run its namespace (None: the agent's own)."""
        self._network = network
        self._containers = containers
        self._store = store
        self._sender = sender
        self._resolver = resolver
        self._policy_of = policy_of
        self._monotonic = monotonic
        self._post = post
        self._on_exit = on_exit

    def pull(self, key: InstanceKey, instance: Instance, run: int) -> None:
        try:
            self._containers.runtime(instance)  # no pull for an instance this node cannot run
            image = self._containers.pull(instance.info.manifest_digest, self._resolver,
                                          instance.info.instance.item_id)
            policy = self._policy_of(image)
            instance.image = image
            self._post(key, ImageReady(run, policy))
        except Exception as err:
            log.warning("instance %s: pull failed: %s", key, err)
            self._post(key, LaunchFailed(run, problem_of(err)))

    def create(self, key: InstanceKey, instance: Instance, run: int) -> None:
        """The run's ``Attach`` and ``Create`` effects, in that order, in one task: the container
        spec names the namespace the attach made. A failed create detaches again (full rollback)."""
        with instance.lock:
            attached = False
            try:
                image = instance.image or self._containers.pull(instance.info.manifest_digest, self._resolver,
                                                                instance.info.instance.item_id)
                network = None
                if self._network is not None and instance.attach_run == run:
                    network = self._network.attach(attach_request(instance, image), run)
                    attached = True
                reader, pid = self._containers.create(instance, image, network)
            except Exception as err:
                if attached and self._network is not None:
                    self._network.detach(instance.container_id, run)
                log.warning("instance %s failed to start: %s", key, err)
                if isinstance(err, ResourceUnavailable):
                    self._sender.send(Out(alert=sm_pb2.Alert(timestamp=now_timestamp(), resource_allocate_alert=(
                        sm_pb2.ResourceAllocateAlert(instance=instance.info.instance, resource=err.resource,
                                                     message=err.message)))))
                self._post(key, LaunchFailed(run, problem_of(err)))
                return
            # ProcessRunning is posted before the output thread starts, so an exit always follows it.
            self._post(key, ProcessRunning(run, self._monotonic()))
            self.follow(key, instance, reader, pid, run)

    def halt(self, key: InstanceKey, instance: Instance, run: int) -> None:
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

    def detach(self, _key: InstanceKey, instance: Instance, run: int) -> None:
        if self._network is None:
            return
        try:
            self._network.detach(instance.container_id, run)
        except Exception as err:  # the manager alerts on what it could not undo
            log.error("instance %s: network detach: %s", instance.container_id, err)

    def follow(self, key: InstanceKey, instance: Instance, reader: int, pid: int, run_number: int,
               started_at: Optional[datetime] = None) -> None:
        run = Run(pid, started_at or datetime.now(timezone.utc), run_number)
        instance.run = run

        def on_exit(status: Optional[int], when: datetime) -> None:
            run.exited.set()
            self._on_exit(Exit(key, run, status, when))

        record_output(reader, self._containers.log_path(instance.container_id), pid, on_exit)

    def reap(self, key: InstanceKey, instance: Instance, status: ExitStatus) -> None:
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

    def local_policy(self, instance: Instance) -> RunPolicy:
        """The run policy of an instance whose image is already here (no download after a restart)."""
        try:
            instance.image = self._containers.local_image(instance.info.manifest_digest,
                                                          instance.info.instance.item_id)
            return self._policy_of(instance.image)
        except Exception as err:
            log.info("instance %s: no usable local image (%s): the default run policy until pulled",
                     instance.info.instance.item_id, err)
            return RunPolicy()


class OfflineTtl:
    """The cloud's absence as an :class:`~.lifecycle.OfflineClock` kept in the store, and the one
    timer to the nearest offline-TTL deadline (it only queues a check on the worker)."""

    def __init__(self, store: LauncherStore, clock: Callable[[], float], on_timer: Callable[[], None]) -> None:
        self._store = store
        self._clock = clock
        self._on_timer = on_timer
        self._offline = OfflineClock(None)
        self._timer: Optional[threading.Timer] = None
        self._deadline: Optional[float] = None

    def load(self) -> None:
        now = self._clock()
        try:
            # Not known to be connected at agent start: the clock runs from now, unless it ran
            # already before the restart.
            clock = OfflineClock(self._store.offline_since()).on_cloud(False, now)
            self._store.set_offline_since(clock.since)
        except StoreError as err:
            log.error("%s", err)
            clock = OfflineClock(now)
        self._offline = clock

    def cloud_changed(self, connected: bool, at: float) -> None:
        clock = self._offline.on_cloud(connected, at)
        if clock != self._offline:
            self._offline = clock
            self._store.set_offline_since(clock.since)

    def expired(self, offline_ttl: Optional[float]) -> bool:
        """True when the cloud has been away longer than ``offline_ttl`` (None: no TTL)."""
        return self._offline.expired(offline_ttl, self._clock())

    def check(self, instances: Mapping[InstanceKey, Instance], expire: Callable[[InstanceKey], None]) -> None:
        """Expire what outlived its TTL; arm one timer to the nearest remaining deadline."""
        now = self._clock()
        nearest: Optional[float] = None
        for key, instance in list(instances.items()):
            if instance.life.phase not in _TTL_PHASES:
                continue
            deadline = self._offline.deadline(instance.life.policy.offline_ttl)
            if deadline is None:
                continue
            if now >= deadline:
                log.info("instance %s: cloud away longer than its offline TTL: stopped", key)
                expire(key)
            elif nearest is None or deadline < nearest:
                nearest = deadline
        if nearest == self._deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._deadline = nearest
        if nearest is not None:
            self._timer = threading.Timer(max(0.0, nearest - now), self._on_timer)
            self._timer.daemon = True
            self._timer.start()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

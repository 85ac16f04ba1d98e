"""The launcher: runs the instances CM wants, reports every change, and brings them back.

Theory of operation:
- CM's UpdateInstances arrives on the stream's reader thread; ``update_instances`` only queues it.
  One worker thread takes jobs in order: batches, and exits reported by the output threads. A
  command that arrives while a batch runs waits its turn; nothing is dropped.
- A batch follows ``plan.plan_update``: stops (``inactive``), then starts (``activating``, then
  ``active`` or ``failed``), each sent as its own UpdateInstancesStatus, then one
  NodeInstancesStatus with every instance.
- Desired instances are written to the SQLite store before they start, so an agent restart or a
  reboot brings them back without CM: ``start`` adopts containers that still run (their output
  FIFO is reopened, see ``output.py``) and restarts the others on the worker thread.
- An instance whose process ends on its own is ``failed`` (exit code or signal in the error), CM
  gets an InstanceAlert, and a CrashRecord is stored for crash-log requests.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional, Sequence, Set, Tuple, Union

from aos_sm.proto.common.v2 import common_pb2
from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

from ..atomic import write_atomic
from ..errors import AosError, Failed, NotFound, ResourceUnavailable, error_info_from_exception, error_info_ok
from ..messages import core_alert, now_timestamp
from ..ports import (CrashRecord, InstanceKey, InstanceLogFile, InstanceMonitorPort, MonitoredInstance,
                     Sender)
from .blobs import BlobStore
from .bundle import BundleSpec, CpuCapacity, build_runtime_spec
from .gc import collect_garbage
from .image import Image, ImageStore, Resolver
from .output import set_subreaper, describe_exit, open_output, record_output, reopen_output
from .plan import info_fingerprint, plan_update
from .records import Exit, Instance, Run, container_id
from .resources import NoResources, ResourceSource
from .runtime import OciRuntime
from .store import LauncherStore

log = logging.getLogger(__name__)

Out = sm_pb2.SMOutgoingMessages
_Job = Union[sm_pb2.UpdateInstances, Exit, str]


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
        clock: Callable[[], float] = time.time,
        resources: Optional[ResourceSource] = None,
        cpu: Optional[CpuCapacity] = None,
    ) -> None:
        """``runtimes`` maps runtime_id -> (type, binary) for the runtimes this node can run;
        ``resources`` grants the item configs' resources (none without it); ``cpu`` is the node
        capacity a ``cpuDMIPSLimit`` is computed from (such items fail without it)."""
        self._sender = sender
        self._root = working_dir / "launcher"
        self._root.mkdir(parents=True, exist_ok=True)
        self._resolver = resolver
        self._monitor = monitor
        self._cgroup_parent = cgroup_parent.strip("/")
        self._image_ttl = image_ttl
        self._stop_timeout = stop_timeout
        self._clock = clock
        self._resources: ResourceSource = resources or NoResources()
        self._cpu = cpu
        self._runtimes = {
            runtime_id: OciRuntime(binary, self._root / "runtime" / kind) for runtime_id, (kind, binary) in runtimes.items()
        }
        self._store = LauncherStore(self._root / "launcher.db")
        self._images = ImageStore(self._root / "images", BlobStore(self._root / "blobs"))
        self._lock = threading.Lock()
        self._instances: Dict[InstanceKey, Instance] = {}
        self._jobs: "queue.Queue[Optional[_Job]]" = queue.Queue()
        self._worker: Optional[threading.Thread] = None
        self._idle = threading.Condition()
        self._busy = 0
        self._touched: Dict[str, float] = {}
        self.subreaper = False

    # --- LauncherPort

    def update_instances(self, request: sm_pb2.UpdateInstances) -> None:
        self._enqueue(request)

    def node_instances_status(self) -> sm_pb2.NodeInstancesStatus:
        with self._lock:
            return sm_pb2.NodeInstancesStatus(instances=[i.status() for i in self._instances.values()])

    # --- InstanceLogSourcePort

    def instance_logs(self) -> Sequence[InstanceLogFile]:
        with self._lock:
            return [InstanceLogFile(key, self._log_path(i.container_id), self._cgroup(i.container_id))
                    for key, i in self._instances.items()]

    def crashes(self) -> Sequence[CrashRecord]:
        return self._store.crashes()

    # --- life cycle

    def start(self) -> None:
        """Bring back the stored instances (adopt or queue a restart), then start the worker."""
        self.subreaper = set_subreaper(True)
        if self._store.problem:
            self._sender.send(core_alert(self._store.problem))
        restart = False
        stored = self._store.instances()
        self._remove_strays({container for _, container in stored.values()})
        for key, (info, container) in stored.items():
            instance = Instance(info, container)
            with self._lock:
                self._instances[key] = instance
            if not self._adopt(key, instance):
                restart = True
        if restart:
            self._enqueue("restore")
        self._enqueue("gc")
        self._worker = threading.Thread(target=self._work, name="launcher", daemon=True)
        self._worker.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the worker; instances keep running (the next start adopts them)."""
        self._jobs.put(None)
        if self._worker is not None:
            self._worker.join(timeout)
        if self.subreaper:
            self.subreaper = not set_subreaper(False)

    def stop_all_instances(self) -> None:
        """Stop every instance now (tests, decommissioning); the store forgets them."""
        with self._lock:
            keys = list(self._instances)
        for key in keys:
            self._stop(key, forget=True)

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until every queued job is done (tests, benchmarks)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)

    def _enqueue(self, job: _Job) -> None:
        with self._idle:
            self._busy += 1
        self._jobs.put(job)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                if isinstance(job, sm_pb2.UpdateInstances):
                    self._batch(job)
                elif isinstance(job, Exit):
                    self._exited(job)
                elif job == "restore":
                    self._restore()
                elif job == "gc":
                    self._collect_garbage()
            except Exception as err:  # the worker must outlive any one job
                log.exception("launcher job failed")
                self._sender.send(core_alert(f"launcher: {err}"))
                if isinstance(job, sm_pb2.UpdateInstances):
                    # CM waits for the batch's NodeInstancesStatus: it gets one, with the truth.
                    self._sender.send(Out(node_instances_status=self.node_instances_status()))
            finally:
                with self._idle:
                    self._busy -= 1
                    self._idle.notify_all()

    def _set_state(self, instance: Instance, state: str, error: common_pb2.ErrorInfo) -> None:
        # Under the lock so that node_instances_status never pairs a new state with an old error.
        with self._lock:
            instance.state, instance.error = state, error

    # --- naming

    def _container_id(self, key: InstanceKey) -> str:
        return container_id(self._cgroup_parent, key)

    def _cgroup(self, container: str) -> str:
        return f"{self._cgroup_parent}/{container}"

    def _log_path(self, container: str) -> Path:
        return self._root / "logs" / f"{container}.log"

    def _bundle(self, container: str) -> Path:
        return self._root / "bundles" / container

    # --- batches

    def _send_status(self, instance: Instance) -> None:
        self._sender.send(Out(update_instances_status=sm_pb2.UpdateInstancesStatus(instances=[instance.status()])))

    def _batch(self, request: sm_pb2.UpdateInstances) -> None:
        with self._lock:
            current = {key: (info_fingerprint(i.info), i.state == "active") for key, i in self._instances.items()}
        plan = plan_update(current, request.stop_instances, request.start_instances)
        for key in plan.stop:
            stopped = self._stop(key, forget=True)
            self._set_state(stopped, "inactive", error_info_ok())
            self._send_status(stopped)
        for key in plan.restart:
            self._stop(key, forget=False)
        for key in plan.keep:
            with self._lock:
                kept = self._instances[key]
            self._send_status(kept)
        for info in plan.start:
            self._start(InstanceKey.from_ident(info.instance), info)
        self._sender.send(Out(node_instances_status=self.node_instances_status()))
        self._collect_garbage()

    def _start(self, key: InstanceKey, info: sm_pb2.InstanceInfo) -> None:
        instance = Instance(info, self._container_id(key))
        with self._lock:
            self._instances[key] = instance
        self._send_status(instance)
        try:
            self._store.put_instance(key, info, instance.container_id)
        except sqlite3.Error as err:
            # Not started: an instance the store cannot remember would not come back after a reboot.
            self._set_state(instance, "failed", Failed(f"launcher store: {err}").to_error_info())
        else:
            self._launch(key, instance)
        self._send_status(instance)

    def _launch(self, key: InstanceKey, instance: Instance) -> None:
        """Pull, bundle and run; leaves ``instance`` ``active`` or ``failed``."""
        runtime = self._runtimes.get(instance.info.runtime_id)
        try:
            if runtime is None:
                raise NotFound(f"runtime {instance.info.runtime_id!r} is not available on this node")
            image = self._images.pull(instance.info.manifest_digest, self._resolver)
            self._touch_image(image.manifest_digest)
            bundle = self._bundle(instance.container_id)
            bundle.mkdir(parents=True, exist_ok=True)
            spec = build_runtime_spec(image.config, self._bundle_spec(instance, image))
            write_atomic(bundle / "config.json", _json(spec), 0o644)
            runtime.delete(instance.container_id)  # a leftover of a run the agent did not see end
            self._log_path(instance.container_id).parent.mkdir(parents=True, exist_ok=True)
            reader, writer = open_output(bundle / "output.fifo")
            try:
                pid = runtime.run_detached(instance.container_id, bundle, writer)
            except BaseException:
                os.close(reader)
                raise
            finally:
                os.close(writer)
            self._follow(key, instance, reader, pid)
        except Exception as err:
            log.warning("instance %s failed to start: %s", key, err)
            self._set_state(instance, "failed", error_info_from_exception(err))
            if isinstance(err, ResourceUnavailable):
                self._sender.send(Out(alert=sm_pb2.Alert(timestamp=now_timestamp(), resource_allocate_alert=(
                    sm_pb2.ResourceAllocateAlert(instance=instance.info.instance, resource=err.resource,
                                                 message=err.message)))))
            if runtime is not None:
                with contextlib.suppress(AosError):
                    runtime.delete(instance.container_id)  # nothing half-created stays behind
            return
        self._set_state(instance, "active", error_info_ok())
        self._monitor.register_instance(self._monitored(key, instance))

    def _bundle_spec(self, instance: Instance, image: Image) -> BundleSpec:
        info = instance.info
        state_is_file = True
        if info.storage_path:
            Path(info.storage_path).mkdir(parents=True, exist_ok=True)
        if info.state_path:
            state = Path(info.state_path)
            if state.is_dir():
                state_is_file = False
            elif not state.exists():
                state.parent.mkdir(parents=True, exist_ok=True)
                state.touch()
        ident = info.instance
        return BundleSpec(
            rootfs=str(image.rootfs), hostname=instance.container_id,
            cgroups_path="/" + self._cgroup(instance.container_id),
            uid=info.uid, gid=info.gid, env_vars=tuple((e.name, e.value) for e in info.env_vars),
            priority=info.priority, storage_path=info.storage_path, state_path=info.state_path,
            state_is_file=state_is_file, item_id=ident.item_id, subject_id=ident.subject_id,
            instance_index=ident.instance, item_config=image.item_config,
            resources=self._resources.grant(image.item_config.resources), cpu=self._cpu,
        )

    def _monitored(self, key: InstanceKey, instance: Instance) -> MonitoredInstance:
        partitions = tuple((name, Path(path)) for name, path in
                           (("storage", instance.info.storage_path), ("state", instance.info.state_path)) if path)
        return MonitoredInstance(key, instance.info.runtime_id, self._cgroup(instance.container_id),
                                 instance.info.monitoring_parameters, partitions)

    def _follow(self, key: InstanceKey, instance: Instance, reader: int, pid: int,
                started_at: Optional[datetime] = None) -> None:
        run = Run(pid, started_at or datetime.now(timezone.utc))
        instance.run = run

        def on_exit(status: Optional[int], when: datetime) -> None:
            run.exited.set()
            if not run.stopping:
                self._enqueue(Exit(key, run, status, when))

        record_output(reader, self._log_path(instance.container_id), pid, on_exit)

    def _stop(self, key: InstanceKey, *, forget: bool) -> Instance:
        """End the instance's container; ``forget`` also drops it from memory and the store."""
        with self._lock:
            instance = self._instances.get(key)
            if forget:
                self._instances.pop(key, None)
        if instance is None:
            self._store.remove_instance(key)
            return Instance(sm_pb2.InstanceInfo(instance=key.to_ident()), self._container_id(key))
        runtime = self._runtimes.get(instance.info.runtime_id)
        if instance.run is not None:
            instance.run.stopping = True
            self._monitor.unregister_instance(key)
        if runtime is not None:
            try:
                if instance.run is not None and not instance.run.exited.is_set():
                    runtime.kill(instance.container_id, "TERM")
                    if not instance.run.exited.wait(self._stop_timeout):
                        runtime.kill(instance.container_id, "KILL")
                        instance.run.exited.wait(self._stop_timeout)
                runtime.delete(instance.container_id)
            except AosError as err:
                log.error("stopping %s: %s", key, err)
                self._sender.send(core_alert(f"stopping instance {key.item_id}/{key.instance}: {err}"))
        if instance.run is not None:
            self._touch_image(instance.info.manifest_digest)
        instance.run = None
        if forget:
            self._store.remove_instance(key)
        return instance

    # --- exits

    def _exited(self, event: Exit) -> None:
        with self._lock:
            instance = self._instances.get(event.key)
        if instance is None or instance.run is not event.run or event.run.stopping:
            return
        reason = describe_exit(event.status)
        # ErrorInfo.exit_code: the exit code, or minus the signal number for a killed process.
        code = 0
        if event.status is not None:
            code = -os.WTERMSIG(event.status) if os.WIFSIGNALED(event.status) else os.WEXITSTATUS(event.status)
        instance.run = None
        self._set_state(instance, "failed", Failed(f"instance {reason}", exit_code=code).to_error_info())
        self._monitor.unregister_instance(event.key)
        runtime = self._runtimes.get(instance.info.runtime_id)
        if runtime is not None:
            try:
                runtime.delete(instance.container_id)
            except AosError as err:
                log.error("removing the ended container of %s: %s", event.key, err)
        self._store.add_crash(CrashRecord(event.key, self._log_path(instance.container_id),
                                          event.run.started_at, event.when, reason))
        self._touch_image(instance.info.manifest_digest)
        log.warning("instance %s %s", event.key, reason)
        self._send_status(instance)
        self._sender.send(Out(alert=sm_pb2.Alert(
            timestamp=now_timestamp(),
            instance_alert=sm_pb2.InstanceAlert(instance=instance.info.instance, service_version=instance.info.version,
                                                message=f"instance {reason}"),
        )))

    # --- restore after a restart

    def _adopt(self, key: InstanceKey, instance: Instance) -> bool:
        """True when the instance's container still runs and its output FIFO could be reopened."""
        runtime = self._runtimes.get(instance.info.runtime_id)
        if runtime is None:
            return False
        try:
            state = runtime.state(instance.container_id)
        except AosError as err:
            log.warning("state of %s: %s", key, err)
            return False
        if state is None or state.status != "running":
            return False
        reader = reopen_output(self._bundle(instance.container_id) / "output.fifo")
        if reader is None:
            return False
        # The run began when the container was created, not when we adopted it: a crash record's
        # time range must cover the lines it wrote before the agent came back.
        self._follow(key, instance, reader, state.pid, started_at=state.created)
        self._set_state(instance, "active", error_info_ok())
        self._monitor.register_instance(self._monitored(key, instance))
        log.info("instance %s adopted: container %s still runs (pid %d)", key, instance.container_id, state.pid)
        return True

    def _remove_strays(self, wanted: Set[str]) -> None:
        """Delete containers in our runtimes' state roots that no stored instance owns: the agent
        died between stopping one and forgetting it, or CM's stop arrived while it was down."""
        for runtime in self._runtimes.values():
            try:
                strays = [c for c in runtime.list_ids() if c not in wanted]
                for container in strays:
                    log.warning("container %s belongs to no instance: removed", container)
                    runtime.delete(container)
            except AosError as err:
                log.error("looking for stray containers: %s", err)

    def _restore(self) -> None:
        with self._lock:
            waiting = [(key, i) for key, i in self._instances.items() if i.state != "active"]
        for key, instance in waiting:
            self._launch(key, instance)
            self._send_status(instance)
        if waiting:
            self._sender.send(Out(node_instances_status=self.node_instances_status()))

    def _touch_image(self, digest: str) -> None:
        # One durable write per image per minute is plenty for a TTL counted in hours; a batch of
        # twenty instances of one image would otherwise pay twenty fsyncs for the same fact.
        now = self._clock()
        if now - self._touched.get(digest, float("-inf")) >= 60.0:
            self._store.touch_image(digest, now)
            self._touched[digest] = now

    def _collect_garbage(self) -> None:
        with self._lock:
            in_use = {i.info.manifest_digest for i in self._instances.values()}
        collect_garbage(self._store, self._images, in_use, self._clock(), self._image_ttl)


def _json(spec: Mapping[str, object]) -> bytes:
    return json.dumps(spec, indent=2).encode()

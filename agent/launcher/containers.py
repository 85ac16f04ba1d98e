"""The blocking half of the launcher's runner: images, bundles and containers on this node.

Each method carries out one effect of the life cycle (``lifecycle.py``) and raises an AosError
when it cannot; the launcher runs them in its pools and turns the outcome into the next event.
Nothing here decides anything: what to do and when is the core's business.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import threading
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Set, Tuple

from ..errors import AosError, NotFound
from ..network.instance import InstanceNetwork
from ..ports import InstanceKey, MonitoredInstance
from .blobs import BlobStore
from .bundle import BundleSpec, CpuCapacity, build_runtime_spec
from .gc import collect_garbage
from .image import Image, ImageStore, Resolver
from .output import open_output, reopen_output
from .records import Instance, Run, container_id
from .resources import NoResources, ResourceSource
from .runtime import ContainerState, OciRuntime
from .store import LauncherStore, StoreError

log = logging.getLogger(__name__)


class Containers:
    def __init__(
        self,
        *,
        root: Path,
        runtimes: Mapping[str, Tuple[str, str]],
        store: LauncherStore,
        cgroup_parent: str,
        stop_timeout: float,
        clock: Callable[[], float],
        resources: Optional[ResourceSource] = None,
        cpu: Optional[CpuCapacity] = None,
    ) -> None:
        self.root = root
        self.cgroup_parent = cgroup_parent
        self.runtimes = {
            runtime_id: OciRuntime(binary, root / "runtime" / kind) for runtime_id, (kind, binary) in runtimes.items()
        }
        self.images = ImageStore(root / "images", BlobStore(root / "blobs"))
        self._store = store
        self._stop_timeout = stop_timeout
        self._clock = clock
        self._resources: ResourceSource = resources or NoResources()
        self._cpu = cpu
        self._lock = threading.Lock()
        self._image_locks: Dict[str, threading.Lock] = {}
        self._touched: Dict[str, float] = {}

    # --- naming

    def container_id(self, key: InstanceKey) -> str:
        return container_id(self.cgroup_parent, key)

    def cgroup(self, container: str) -> str:
        return f"{self.cgroup_parent}/{container}"

    def log_path(self, container: str) -> Path:
        return self.root / "logs" / f"{container}.log"

    def bundle(self, container: str) -> Path:
        return self.root / "bundles" / container

    def host_path(self, kind: str, path: str) -> Path:
        """Where an instance's ``storage`` or ``state`` path lives on the host. CM sends them
        relative (``<item>/<subject>/<instance>``, INSTANCES.md "Storage and state"), joined
        here to ``<workingDir>/storages`` or ``<workingDir>/states``: taken as given they would
        land relative to the agent's working directory (``/`` under systemd). The boundary
        (agent/wirecheck.py) refuses absolute paths and ``..``; an absolute one here comes
        from a direct caller (tests) and is kept."""
        return Path(path) if Path(path).is_absolute() else self.root.parent / f"{kind}s" / path

    def runtime(self, instance: Instance) -> OciRuntime:
        runtime = self.runtimes.get(instance.info.runtime_id)
        if runtime is None:
            raise NotFound(f"runtime not available on this node: {instance.info.runtime_id!r}")
        return runtime

    # --- images

    def pull(self, digest: str, resolver: Resolver) -> Image:
        # Instances of one image start in parallel: one pulls and unpacks, the others wait for it.
        with self._lock:
            lock = self._image_locks.setdefault(digest, threading.Lock())
        with lock:
            return self.images.pull(digest, resolver)

    def local_image(self, digest: str) -> Image:
        """The image if every blob is here already (after an agent restart, before any CM)."""

        def offline(digests: List[str]) -> List[str]:
            raise NotFound(f"{len(digests)} blobs of {digest} are not stored here")

        return self.pull(digest, offline)

    def touch_image(self, digest: str) -> None:
        # One durable write per image per minute is plenty for a TTL counted in hours; a batch of
        # twenty instances of one image would otherwise pay twenty fsyncs for the same fact.
        now = self._clock()
        with self._lock:
            if now - self._touched.get(digest, float("-inf")) < 60.0:
                return
            self._touched[digest] = now
        try:
            self._store.touch_image(digest, now)
        except StoreError as err:
            log.error("%s", err)

    def collect_garbage(self, in_use: Set[str], ttl: float) -> None:
        collect_garbage(self._store, self.images, in_use, self._clock(), ttl)

    # --- containers

    def create(self, instance: Instance, image: Image, network: Optional[InstanceNetwork] = None) -> Tuple[int, int]:
        """Write the bundle and start the container (in ``network``'s namespace when given);
        (output reader fd, host pid). On failure nothing half-created stays behind."""
        runtime = self.runtime(instance)
        try:
            self.touch_image(image.manifest_digest)
            bundle = self.bundle(instance.container_id)
            bundle.mkdir(parents=True, exist_ok=True)
            bundle_spec = self.bundle_spec(instance, image)
            if network is not None:
                bundle_spec = dataclasses.replace(bundle_spec, netns=str(network.netns))
                if network.files is not None:
                    # The instance's rootfs top layer will carry these once it exists; bound until then.
                    hosts, resolv = bundle / "hosts", bundle / "resolv.conf"
                    # NETWORK.md: the resources' ``hosts`` come last in the instance's /etc/hosts.
                    extra = "".join(f"{ip} {name}\n" for ip, name in bundle_spec.resources.hosts)
                    _write_bundle_config(hosts, (network.files.hosts + extra).encode())
                    _write_bundle_config(resolv, network.files.resolv_conf.encode())
                    bundle_spec = dataclasses.replace(bundle_spec, hosts_file=str(hosts), resolv_file=str(resolv))
            spec = build_runtime_spec(image.config, bundle_spec)
            _write_bundle_config(bundle / "config.json", json.dumps(spec, indent=2).encode())
            runtime.delete(instance.container_id)  # a leftover of a run the agent did not see end
            self.log_path(instance.container_id).parent.mkdir(parents=True, exist_ok=True)
            reader, writer = open_output(bundle / "output.fifo")
            try:
                pid = runtime.run_detached(instance.container_id, bundle, writer)
            except BaseException:
                os.close(reader)
                raise
            finally:
                os.close(writer)
        except BaseException:
            with contextlib.suppress(AosError):
                runtime.delete(instance.container_id)
            raise
        return reader, pid

    def halt(self, instance: Instance, run: Optional[Run]) -> None:
        """End the container (TERM, then KILL after the stop timeout) and remove it."""
        runtime = self.runtimes.get(instance.info.runtime_id)
        if runtime is None:
            return  # never created here
        if run is not None and not run.exited.is_set():
            runtime.kill(instance.container_id, "TERM")
            if not run.exited.wait(self._stop_timeout):
                runtime.kill(instance.container_id, "KILL")
                run.exited.wait(self._stop_timeout)
        runtime.delete(instance.container_id)

    def remove(self, instance: Instance) -> None:
        """Remove the container of a process that ended on its own."""
        runtime = self.runtimes.get(instance.info.runtime_id)
        if runtime is not None:
            try:
                runtime.delete(instance.container_id)
            except AosError as err:
                log.error("removing the ended container %s: %s", instance.container_id, err)

    def still_running(self, instance: Instance) -> Optional[Tuple[int, ContainerState]]:
        """(output reader fd, state) when the instance's container survived an agent restart."""
        runtime = self.runtimes.get(instance.info.runtime_id)
        if runtime is None:
            return None
        try:
            state = runtime.state(instance.container_id)
        except AosError as err:
            log.warning("state of %s: %s", instance.container_id, err)
            return None
        if state is None or state.status != "running":
            return None
        reader = reopen_output(self.bundle(instance.container_id) / "output.fifo")
        return None if reader is None else (reader, state)

    def remove_strays(self, wanted: Set[str]) -> None:
        """Delete containers in our runtimes' state roots that no stored instance owns: the agent
        died between stopping one and forgetting it, or CM's stop arrived while it was down."""
        for runtime in self.runtimes.values():
            try:
                strays = [c for c in runtime.list_ids() if c not in wanted]
                for container in strays:
                    log.warning("container %s belongs to no instance: removed", container)
                    runtime.delete(container)
            except AosError as err:
                log.error("looking for stray containers: %s", err)

    def bundle_spec(self, instance: Instance, image: Image) -> BundleSpec:
        info = instance.info
        state_is_file = True
        storage = str(self.host_path("storage", info.storage_path)) if info.storage_path else ""
        state_path = str(self.host_path("state", info.state_path)) if info.state_path else ""
        if storage:
            Path(storage).mkdir(parents=True, exist_ok=True)
        if state_path:
            state = Path(state_path)
            if state.is_dir():
                state_is_file = False
            elif not state.exists():
                state.parent.mkdir(parents=True, exist_ok=True)
                state.touch()
        ident = info.instance
        return BundleSpec(
            rootfs=str(image.rootfs), hostname=instance.container_id,
            cgroups_path="/" + self.cgroup(instance.container_id),
            uid=info.uid, gid=info.gid, env_vars=tuple((e.name, e.value) for e in info.env_vars),
            priority=info.priority, storage_path=storage, state_path=state_path,
            state_is_file=state_is_file, item_id=ident.item_id, subject_id=ident.subject_id,
            instance_index=ident.instance, item_config=image.item_config,
            resources=self._resources.grant(image.item_config.resources), cpu=self._cpu,
        )

    def monitored(self, key: InstanceKey, instance: Instance) -> MonitoredInstance:
        partitions = tuple((name, self.host_path(name, path)) for name, path in
                           (("storage", instance.info.storage_path), ("state", instance.info.state_path)) if path)
        return MonitoredInstance(key, instance.info.runtime_id, self.cgroup(instance.container_id),
                                 instance.info.monitoring_parameters, partitions,
                                 instance_id=instance.container_id)


def _write_bundle_config(path: Path, data: bytes) -> None:
    # Renamed into place so runc never reads half a file, but not fsynced: every start writes the
    # bundle afresh (after a power cut there is no container to read it), and an fsync per
    # instance is what would make a batch's parallel starts queue on the disk.
    temporary = path.with_name(path.name + ".new")
    temporary.write_bytes(data)
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)

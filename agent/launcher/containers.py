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
from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Set, Tuple

from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

from aos_sm.proto.common.v2 import common_pb2

from ..errors import AosError, NotFound
from ..network.instance import InstanceNetwork
from ..ports import InstanceKey, MonitoredInstance
from .blobs import BlobStore
from .bundle import BundleSpec, CpuCapacity, build_runtime_spec
from .gc import collect_garbage
from .image import Image, ImageStore, Resolver
from .mounts import RootfsError, ensure_tmpfs, mount_rootfs, probe_host, probe_layer, release_tmpfs, remove_rootfs
from .output import open_output, reopen_output
from .records import Instance, Run, container_id
from .resources import NoResources, ResourceSource
from .rootfs import DEFAULT_HOST_DIRS, HOST_BINDS, EtcFiles, MountPoint, default_etc_files, plan_rootfs
from .runtime import ContainerState, OciRuntime
from .storage import check, create_state, create_storage, relative_parts
from .store import LauncherStore, StoreError

log = logging.getLogger(__name__)

# The network manager's hook: an instance's /etc/hosts and /etc/resolv.conf from its InstanceInfo
# and hostname (None: the defaults of ``rootfs.default_etc_files``).
EtcFilesSource = Callable[[sm_pb2.InstanceInfo, str], Optional[EtcFiles]]


def image_layers(image: Image) -> Tuple[Path, ...]:
    """The image's layer directories, bottom first."""
    if not image.layers:
        raise RootfsError(f"image {image.manifest_digest} has no layers")
    return image.layers


class InstanceSecrets(Protocol):
    """IAM's instance registration (agent/iam/instance_secrets.py): for instances whose item
    config has ``permissions``, ``register`` on start gives ``AOS_SECRET``, ``unregister`` on
    stop; each raises an AosError that fails the start with its reason."""

    def register(self, instance: common_pb2.InstanceIdent, permissions: Mapping[str, Any]) -> str: ...

    def unregister(self, instance: common_pb2.InstanceIdent) -> None: ...


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
        secrets: Optional[InstanceSecrets] = None,
        in_use: Callable[[], Set[str]] = set,
        images_part_limit: Optional[float] = None,
        storage_dir: Optional[Path] = None,
        state_dir: Optional[Path] = None,
        host_dirs: Sequence[str] = DEFAULT_HOST_DIRS,
        host_root: Path = Path("/"),
        etc_files: Optional[EtcFilesSource] = None,
    ) -> None:
        """``storage_dir`` / ``state_dir``: where CM's relative paths are joined (default
        ``<workingDir>/storages`` and ``/states``); ``host_dirs``: the host's top-level entries
        every instance sees (rootfs.py); ``host_root``: the host's ``/`` (tests point elsewhere);
        ``in_use`` says which images desired instances use (never evicted for space);
        ``images_part_limit`` caps the image store at that percent of its partition."""
        self.root = root
        self._secrets = secrets
        self.storage_dir = storage_dir or root.parent / "storages"
        self.state_dir = state_dir or root.parent / "states"
        self.host_dirs = tuple(host_dirs)
        self.host_root = host_root
        self._etc_files = etc_files
        self._roots_ready = False
        self.cgroup_parent = cgroup_parent
        self.runtimes = {
            runtime_id: OciRuntime(binary, root / "runtime" / kind) for runtime_id, (kind, binary) in runtimes.items()
        }
        self._store = store
        self._in_use = in_use
        self.images = ImageStore(root / "images", BlobStore(root / "blobs"), usage=self,
                                 limit_percent=images_part_limit, clock=clock)
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

    def rootfs_dir(self, container: str) -> Path:
        return self.root / "rootfs" / container

    def release_roots(self) -> None:
        """Unmount the roots' tmpfs when no instance has a root there: the agent stops with
        nothing running, and its working directory can then be removed like any directory. The
        next instance start mounts it again."""
        with self._lock:
            if release_tmpfs(self.root / "rootfs"):
                self._roots_ready = False

    def runtime(self, instance: Instance) -> OciRuntime:
        runtime = self.runtimes.get(instance.info.runtime_id)
        if runtime is None:
            raise NotFound(f"runtime not available on this node: {instance.info.runtime_id!r}")
        return runtime

    # --- images

    def pull(self, digest: str, resolver: Resolver, item_id: str = "") -> Image:
        # Instances of one image start in parallel: one pulls and unpacks, the others wait for it.
        with self._lock:
            lock = self._image_locks.setdefault(digest, threading.Lock())
        with lock:
            return self.images.pull(digest, resolver, item_id)

    def local_image(self, digest: str, item_id: str = "") -> Image:
        """The image if every blob is here already (after an agent restart, before any CM)."""

        def offline(digests: List[str]) -> List[str]:
            raise NotFound(f"{len(digests)} blobs of {digest} are not stored here")

        return self.pull(digest, offline, item_id)

    # ImageUsage, for the image store's evictions

    def images_in_use(self) -> Set[str]:
        return self._in_use()

    def image_last_used(self) -> Mapping[str, float]:
        try:
            return self._store.image_use()
        except StoreError as err:
            log.error("%s", err)
            return {}

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

    def collect_garbage(self, in_use: Set[str], ttl: float, *, verify: bool = False) -> List[str]:
        """Apply the removal policy (and re-verify the layers when ``verify``); the problems CM
        should hear of."""
        return collect_garbage(self._store, self.images, in_use, self._clock(), ttl, verify=verify)

    # --- containers

    def create(self, instance: Instance, image: Image, network: Optional[InstanceNetwork] = None) -> Tuple[int, int]:
        """Write the bundle and start the container (in ``network``'s namespace when given);
        (output reader fd, host pid). On failure nothing half-created stays behind."""
        runtime = self.runtime(instance)
        registered = False
        try:
            self.touch_image(image.manifest_digest)
            bundle = self.bundle(instance.container_id)
            bundle.mkdir(parents=True, exist_ok=True)
            spec_input = self.bundle_spec(instance, image)
            etc: Optional[EtcFiles] = None
            if network is not None:
                spec_input = dataclasses.replace(spec_input, netns=str(network.netns))
                if network.files is not None:
                    # Into the rootfs top layer. NETWORK.md: the resources' ``hosts`` come last.
                    extra = "".join(f"{ip} {name}\n" for ip, name in spec_input.resources.hosts)
                    etc = EtcFiles(network.files.hosts + extra, network.files.resolv_conf)
            with_secret = self._with_secret(instance, image, spec_input)
            registered = with_secret is not spec_input
            spec = build_runtime_spec(image.config, with_secret)
            runtime.delete(instance.container_id)  # a leftover of a run the agent did not see end
            self._mount_rootfs(instance, image, spec, etc)
            _write_bundle_config(bundle / "config.json", json.dumps(spec, indent=2).encode())
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
            with contextlib.suppress(AosError):
                remove_rootfs(self.rootfs_dir(instance.container_id))
            if registered:
                self._unregister(instance, image)
            raise
        return reader, pid

    def _with_secret(self, instance: Instance, image: Image, spec: BundleSpec) -> BundleSpec:
        """``AOS_SECRET`` from IAM, last in the environment so nothing overrides it."""
        permissions = image.item_config.permissions
        if not permissions or self._secrets is None:
            return spec
        secret = self._secrets.register(instance.info.instance, permissions)
        return dataclasses.replace(spec, env_vars=spec.env_vars + (("AOS_SECRET", secret),))

    def _unregister(self, instance: Instance, image: Optional[Image]) -> None:
        if self._secrets is None or image is None or not image.item_config.permissions:
            return
        try:
            self._secrets.unregister(instance.info.instance)
        except AosError as err:
            log.error("%s: %s", err, instance.container_id)

    def _mount_rootfs(self, instance: Instance, image: Image, spec: Dict[str, Any],
                      etc: Optional[EtcFiles] = None) -> None:
        """Mount the instance's root (rootfs.py) where ``spec`` says runc finds it; ``etc`` (the
        network's /etc/hosts and /etc/resolv.conf) goes into its top layer."""
        layers = image_layers(image)
        host = probe_host(self.host_root, self.host_dirs)
        names = [entry.name for entry in host]
        mounts = [MountPoint(m["destination"], m.get("type") == "bind" and os.path.isfile(m["source"]))
                  for m in spec["mounts"]]
        hostname = str(spec.get("hostname", ""))
        if etc is None and self._etc_files is not None:
            etc = self._etc_files(instance.info, hostname)
        if etc is None:
            etc = default_etc_files(hostname, _read_text(self.host_root / "etc" / "resolv.conf"))
        with self._lock:
            if not self._roots_ready:
                ensure_tmpfs(self.root / "rootfs")
                self._roots_ready = True
        directory = self.rootfs_dir(instance.container_id)
        plan = plan_rootfs(top=str(directory / "top"), host_layer=str(directory / "host"),
                           image_layers=[str(layer) for layer in layers],
                           probes=[probe_layer(layer, names) for layer in layers], host=host,
                           host_root=str(self.host_root), mounts=mounts, etc=etc)
        mnt = mount_rootfs(directory, plan)
        spec["root"]["path"] = str(mnt)

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
        try:
            remove_rootfs(self.rootfs_dir(instance.container_id))
        except RootfsError as err:
            # The container is gone, so the stop did its job; the next start (or agent start,
            # once no stored instance owns it) removes what is left.
            log.error("stopping %s: %s", instance.container_id, err)
        self._unregister(instance, instance.image)

    def remove(self, instance: Instance) -> None:
        """Remove the container of a process that ended on its own."""
        runtime = self.runtimes.get(instance.info.runtime_id)
        if runtime is not None:
            try:
                runtime.delete(instance.container_id)
                remove_rootfs(self.rootfs_dir(instance.container_id))
            except AosError as err:
                log.error("removing the ended container %s: %s", instance.container_id, err)
        # Its secret ends with it: a restart registers the instance again.
        self._unregister(instance, instance.image)

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
        # Roots no stored instance owns; a stored one keeps its root: it may still run (adopted),
        # and a create rebuilds it otherwise.
        rootfs = self.root / "rootfs"
        for directory in sorted(rootfs.iterdir()) if rootfs.is_dir() else []:
            if directory.name not in wanted:
                try:
                    remove_rootfs(directory)
                    log.warning("root filesystem %s belongs to no instance: removed", directory.name)
                except AosError as err:
                    log.error("removing the stray root filesystem %s: %s", directory.name, err)

    def bundle_spec(self, instance: Instance, image: Image) -> BundleSpec:
        """The bundle's inputs; creates the storage directory and the state file (both checked
        before either is created: a refused path writes nothing)."""
        info = instance.info
        storage_parts = check(self.storage_dir, info.storage_path, "storage_path", True) if info.storage_path else ()
        state_parts = check(self.state_dir, info.state_path, "state_path", False) if info.state_path else ()
        storage = str(create_storage(self.storage_dir, storage_parts, info.uid, info.gid)) if storage_parts else ""
        state = str(create_state(self.state_dir, state_parts, info.uid, info.gid)) if state_parts else ""
        ident = info.instance
        return BundleSpec(
            rootfs=str(self.rootfs_dir(instance.container_id) / "mnt"), hostname=instance.container_id,
            cgroups_path="/" + self.cgroup(instance.container_id),
            uid=info.uid, gid=info.gid, env_vars=tuple((e.name, e.value) for e in info.env_vars),
            priority=info.priority, storage_path=storage, state_path=state,
            item_id=ident.item_id, subject_id=ident.subject_id,
            instance_index=ident.instance, item_config=image.item_config,
            resources=self._resources.grant(image.item_config.resources), cpu=self._cpu,
            host_binds=tuple(path for path in HOST_BINDS if (self.host_root / path.lstrip("/")).exists()),
        )

    def monitored(self, key: InstanceKey, instance: Instance) -> MonitoredInstance:
        # INSTANCES.md: instance partitions are reported (and matched by alert rules) by these names.
        partitions = []
        for name, base, path in (("storages", self.storage_dir, instance.info.storage_path),
                                 ("states", self.state_dir, instance.info.state_path)):
            if path:
                with contextlib.suppress(AosError):
                    partitions.append((name, base.joinpath(*relative_parts(path, name))))
        return MonitoredInstance(key, instance.info.runtime_id, self.cgroup(instance.container_id),
                                 instance.info.monitoring_parameters, tuple(partitions),
                                 instance_id=instance.container_id)


def _write_bundle_config(path: Path, data: bytes) -> None:
    # Renamed into place so runc never reads half a file, but not fsynced: every start writes the
    # bundle afresh (after a power cut there is no container to read it), and an fsync per
    # instance is what would make a batch's parallel starts queue on the disk.
    temporary = path.with_name(path.name + ".new")
    temporary.write_bytes(data)
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""

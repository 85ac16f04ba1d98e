"""Host resources an instance asks for (item config ``resources``), granted from ``resourcesConfigFile``.

INSTANCES.md "Resources": each requested name must be an entry of the resources file; its
``groups`` become extra gids of the process, ``devices`` device nodes in the container plus a
device-cgroup allow rule, ``mounts`` extra mounts and ``envs`` environment variables.

Two kinds of failure, told apart because CM reacts differently:
- a name the resources file does not have is the item's mistake: :class:`NotFound` (aos_code 5);
- a name the file has but this node cannot honour (a group missing from ``/etc/group``, a device
  missing, not a device, or not allowed the mode asked for) is the node's:
  :class:`ResourceUnavailable`, also ``notFound``, after which the launcher sends CM a
  ``ResourceAllocateAlert`` naming the resource. The reference SM never sends that alert; we do,
  so CM learns that the node offers something it cannot give.

Device access: a device spec ``/dev/x[:/dev/y[:rwm]]`` grants its third part (``rwm`` when
absent, as the reference's AddDevice does); the request's ``mode`` can only narrow it, so an item
never gets more than the operator wrote in the resources file.

``grant_resources`` is pure: the file's entries, the host's groups and a device lookup come in.
``HostResources`` is the adapter that reads them under a root directory (``/`` on a node, a fixture
tree in tests); mount sources are passed to the runtime unchanged.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple

from aos_sm.hw.resources import Resource, ResourceMount, parse_resource

from ..errors import NotFound, ResourceUnavailable
from .itemconfig import ResourceRequest

log = logging.getLogger(__name__)

_FULL_ACCESS = "rwm"


@dataclass(frozen=True)
class HostDevice:
    """A device node on the host: ``relative`` is its path below the spec's host path ("" for
    the node itself, "sub/name" for a node found in a spec that names a directory)."""

    relative: str
    kind: str  # "c" or "b"
    major: int
    minor: int
    file_mode: int
    uid: int
    gid: int


@dataclass(frozen=True)
class DeviceGrant:
    """One device node in the container and its device-cgroup allow rule."""

    path: str
    kind: str
    major: int
    minor: int
    file_mode: int
    uid: int
    gid: int
    access: str  # letters of "rwm", in that order


@dataclass(frozen=True)
class ResourceGrant:
    """What the requested resources add to an instance's runtime spec."""

    additional_gids: Tuple[int, ...] = ()
    devices: Tuple[DeviceGrant, ...] = ()
    mounts: Tuple[ResourceMount, ...] = ()
    envs: Tuple[str, ...] = ()
    hosts: Tuple[Tuple[str, str], ...] = ()  # (ip, hostname): lines of a networked instance's /etc/hosts


# A device lookup: the device nodes at a host path (one node, or those under a directory);
# raises DeviceMissing saying why when there are none.
DeviceLookup = Callable[[str], Sequence[HostDevice]]


class DeviceMissing(LookupError):
    """The host path of a device spec holds no usable device node; the message says why."""


# --- pure ------------------------------------------------------------------------------------------


def parse_group_file(text: str) -> Dict[str, int]:
    """``/etc/group`` (group(5)): name -> gid; malformed lines are skipped, the first entry of a
    name wins as getgrnam(3) returns it."""
    groups: Dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) < 3 or not fields[0] or line.startswith("#"):
            continue
        try:
            gid = int(fields[2])
        except ValueError:
            continue
        groups.setdefault(fields[0], gid)
    return groups


def narrow_access(granted: str, requested: Optional[str]) -> str:
    """The letters of ``rwm`` both the resources file grants and the request asks for."""
    wanted = _FULL_ACCESS if requested is None else requested
    return "".join(letter for letter in _FULL_ACCESS if letter in granted and letter in wanted)


def _device_specs(resource: Resource) -> List[Tuple[str, str, str]]:
    """Each device spec as (host path, container path, granted access)."""
    specs = []
    for spec in resource.devices:
        parts = spec.split(":")
        host = parts[0]
        container = parts[1] if len(parts) > 1 and parts[1] else host
        granted = parts[2] if len(parts) > 2 and parts[2] else _FULL_ACCESS
        specs.append((host, container, granted))
    return specs


def _grant_devices(resource: Resource, request: ResourceRequest, lookup: DeviceLookup) -> List[DeviceGrant]:
    grants: List[DeviceGrant] = []
    for host, container, granted in _device_specs(resource):
        access = narrow_access(granted, request.mode)
        if not access:
            raise ResourceUnavailable(
                request.name, f"resource {request.name}: device {host} grants {granted!r}, not {request.mode!r}")
        try:
            nodes = lookup(host)
        except DeviceMissing as err:
            raise ResourceUnavailable(request.name, f"resource {request.name}: device {host} {err}") from err
        for node in nodes:
            path = container if not node.relative else f"{container.rstrip('/')}/{node.relative}"
            grants.append(DeviceGrant(path, node.kind, node.major, node.minor, node.file_mode, node.uid, node.gid,
                                      access))
    return grants


def grant_resources(requests: Sequence[ResourceRequest], offered: Mapping[str, Resource],
                    groups: Mapping[str, int], lookup: DeviceLookup) -> ResourceGrant:
    """What ``requests`` add to the runtime spec; raises NotFound for a name ``offered`` lacks and
    ResourceUnavailable for one this node cannot honour. Later resources win a same mount
    destination or env name, as they are applied in order."""
    gids: List[int] = []
    devices: List[DeviceGrant] = []
    mounts: Dict[str, ResourceMount] = {}
    envs: List[str] = []
    hosts: List[Tuple[str, str]] = []
    for request in requests:
        resource = offered.get(request.name)
        if resource is None:
            raise NotFound(f"resource {request.name} is not in the node's resources config")
        for group in resource.groups:
            if group not in groups:
                raise ResourceUnavailable(request.name, f"resource {request.name}: group {group} not on this node")
            if groups[group] not in gids:
                gids.append(groups[group])
        devices.extend(_grant_devices(resource, request, lookup))
        for mount in resource.mounts:
            mounts.pop(mount.destination, None)
            mounts[mount.destination] = mount
        envs.extend(resource.envs)
        hosts.extend((host.ip, host.hostname) for host in resource.hosts)
    return ResourceGrant(tuple(gids), tuple(devices), tuple(mounts.values()), tuple(envs), tuple(hosts))


def parse_resources_document(text: str) -> Dict[str, Resource]:
    """The usable entries of a resources file by name. Invalid entries are left out: the
    registration (``hw.load_resources``) already reports them to CM; entries whose device is
    missing are kept, so that a request for one fails with ResourceUnavailable."""
    document = json.loads(text)
    if not isinstance(document, list):
        raise ValueError("must be a JSON array of resources")
    offered: Dict[str, Resource] = {}
    for raw in document:
        try:
            resource = parse_resource(raw)
        except ValueError:
            continue
        offered.setdefault(resource.name, resource)
    return offered


# --- adapters --------------------------------------------------------------------------------------


class ResourceSource(Protocol):
    """Where the launcher gets an instance's resources from (a port, so tests can fake it)."""

    def grant(self, requests: Sequence[ResourceRequest]) -> ResourceGrant: ...


class NoResources:
    """A node without a resources config: every requested name is unknown."""

    def grant(self, requests: Sequence[ResourceRequest]) -> ResourceGrant:
        return grant_resources(requests, {}, {}, _no_device)


def _no_device(path: str) -> Sequence[HostDevice]:
    raise DeviceMissing("not found on this node")


def _under(root: Path, absolute: str) -> Path:
    return root / absolute.lstrip("/")


def _host_device(path: Path, relative: str) -> Optional[HostDevice]:
    info = os.lstat(path)
    if stat.S_ISCHR(info.st_mode):
        kind = "c"
    elif stat.S_ISBLK(info.st_mode):
        kind = "b"
    else:
        return None
    return HostDevice(relative, kind, os.major(info.st_rdev), os.minor(info.st_rdev),
                      stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid)


class HostResources:
    """Grants resources from ``config_file`` (read at each start, so an operator's fix applies to
    the next start), with groups and devices read under ``root``."""

    def __init__(self, config_file: Path, root: Path = Path("/")) -> None:
        self.config_file = config_file
        self.root = root

    def grant(self, requests: Sequence[ResourceRequest]) -> ResourceGrant:
        if not requests:
            return ResourceGrant()
        return grant_resources(requests, self._offered(), self._groups(), self.devices)

    def _offered(self) -> Dict[str, Resource]:
        try:
            return parse_resources_document(self.config_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError, ValueError) as err:
            # Reported at registration already; here every requested name is simply unknown.
            log.error("resources config %s unusable: %s", self.config_file, err)
            return {}

    def _groups(self) -> Dict[str, int]:
        try:
            return parse_group_file(_under(self.root, "/etc/group").read_text(encoding="utf-8", errors="replace"))
        except OSError as err:
            log.error("cannot read /etc/group under %s: %s", self.root, err)
            return {}

    def devices(self, host_path: str) -> Sequence[HostDevice]:
        """The device node at ``host_path``, or every one below it when it is a directory."""
        path = _under(self.root, host_path)
        try:
            if path.is_dir() and not path.is_symlink():
                nodes = []
                for directory, _, files in os.walk(path):
                    for name in sorted(files):
                        found = _host_device(Path(directory) / name,
                                             str((Path(directory) / name).relative_to(path)))
                        if found is not None:
                            nodes.append(found)
                if not nodes:
                    raise DeviceMissing("holds no device node")
                return nodes
            # A symlink (/dev/disk/by-id/...) names the node it points to.
            node = _host_device(path.resolve(), "")
        except FileNotFoundError:
            raise DeviceMissing("not found on this node") from None
        except OSError as err:
            raise DeviceMissing(f"unreadable: {err.strerror}") from err
        if node is None:
            raise DeviceMissing("is not a device node")
        return [node]

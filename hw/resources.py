"""The reference `resources.cfg`: a JSON array of host resources services may request.

Entry shape (PROTOCOL.md "RuntimeInfo and ResourceInfo"): `name` (required), `sharedCount`
(how many instances may hold it, default 0), `groups` [str], `mounts` [{destination, type, source,
options}], `envs` ["K=V"], `hosts` [{ip, hostName}], `devices` ["/dev/x" or "/dev/x:/dev/y[:rwm]"].
Keys are matched case-insensitively, as the reference's Go JSON decoding does.

Policy: an invalid entry is dropped with one problem naming it (index and name) and what is
wrong; valid entries are kept. A resource whose device is missing on this node is dropped too,
with a problem: offering it would let CM place an instance that then fails to start. A missing
file means "no resources" and is not a problem; unreadable or invalid JSON is one problem.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._read import LIVE_ROOT, under


@dataclass(frozen=True)
class ResourceMount:
    destination: str
    type: str = ""
    source: str = ""
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class ResourceHost:
    ip: str
    hostname: str


@dataclass(frozen=True)
class Resource:
    name: str
    shared_count: int = 0
    groups: tuple[str, ...] = ()
    mounts: tuple[ResourceMount, ...] = ()
    envs: tuple[str, ...] = ()
    hosts: tuple[ResourceHost, ...] = ()
    devices: tuple[str, ...] = ()

    def device_host_paths(self) -> tuple[str, ...]:
        """The host side of each device spec (`/dev/video0` of `/dev/video0:/dev/cam:rw`)."""
        return tuple(spec.split(":", 1)[0] for spec in self.devices)


@dataclass(frozen=True)
class ResourcesResult:
    resources: tuple[Resource, ...]
    problems: tuple[str, ...]


class _Invalid(ValueError):
    """One entry is unusable; the message says why."""


_KNOWN_KEYS = ("name", "sharedcount", "groups", "mounts", "envs", "hosts", "devices")


def _strings(value: Any, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _Invalid(f"`{key}` must be a list of strings, got {json.dumps(value)}")
    return tuple(value)


def _objects(value: Any, key: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise _Invalid(f"`{key}` must be a list of objects, got {json.dumps(value)}")
    return [{k.lower(): v for k, v in item.items()} for item in value]


def _text(obj: dict[str, Any], key: str, where: str, required: bool) -> str:
    value = obj.get(key.lower())
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise _Invalid(f"{where}: `{key}` must be a non-empty string, got {json.dumps(value)}")
    return value


def _mount(obj: dict[str, Any], position: int) -> ResourceMount:
    where = f"mounts[{position}]"
    return ResourceMount(
        destination=_text(obj, "destination", where, True), type=_text(obj, "type", where, False),
        source=_text(obj, "source", where, False), options=_strings(obj.get("options"), f"{where}.options"),
    )


def _host(obj: dict[str, Any], position: int) -> ResourceHost:
    where = f"hosts[{position}]"
    ip = _text(obj, "ip", where, True)
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise _Invalid(f"{where}: `ip` {ip!r} is not an IP address") from None
    return ResourceHost(ip=ip, hostname=_text(obj, "hostName", where, True))


def parse_resource(raw: Any) -> Resource:
    """One entry, or _Invalid naming the field and the problem."""
    if not isinstance(raw, dict):
        raise _Invalid(f"must be an object, got {json.dumps(raw)}")
    entry = {key.lower(): value for key, value in raw.items()}
    name = _text(entry, "name", "entry", True)
    shared = entry.get("sharedcount", 0)
    if isinstance(shared, bool) or not isinstance(shared, int) or shared < 0:
        raise _Invalid(f"`sharedCount` must be a non-negative integer, got {json.dumps(shared)}")
    devices = _strings(entry.get("devices"), "devices")
    for spec in devices:
        if not spec.split(":", 1)[0].startswith("/"):
            raise _Invalid(f"device {spec!r}: the host path must be absolute")
    for env in _strings(entry.get("envs"), "envs"):
        if "=" not in env or env.startswith("="):
            raise _Invalid(f"env {env!r} is not NAME=value")
    return Resource(
        name=name, shared_count=shared, groups=_strings(entry.get("groups"), "groups"),
        mounts=tuple(_mount(m, i) for i, m in enumerate(_objects(entry.get("mounts"), "mounts"))),
        envs=_strings(entry.get("envs"), "envs"),
        hosts=tuple(_host(h, i) for i, h in enumerate(_objects(entry.get("hosts"), "hosts"))),
        devices=devices,
    )


def _label(index: int, raw: Any) -> str:
    name = raw.get("name") if isinstance(raw, dict) else None
    return f"resource {index}" + (f" ({name!r})" if isinstance(name, str) and name else "")


def validate_resources(document: Any, root: Path = LIVE_ROOT, source: str = "resources.cfg") -> ResourcesResult:
    """Validate a parsed resources document and check each device exists under `root`."""
    if not isinstance(document, list):
        return ResourcesResult((), (f"{source}: must be a JSON array of resources, got {type(document).__name__}",))
    resources: list[Resource] = []
    problems: list[str] = []
    seen: set[str] = set()
    for index, raw in enumerate(document):
        label = f"{source}: {_label(index, raw)}"
        try:
            resource = parse_resource(raw)
        except _Invalid as err:
            problems.append(f"{label}: {err}; entry dropped")
            continue
        unknown = sorted(k for k in raw if k.lower() not in _KNOWN_KEYS)
        if unknown:
            problems.append(f"{label}: unknown keys {unknown} ignored")
        if resource.name in seen:
            problems.append(f"{label}: duplicate name; entry dropped")
            continue
        missing = [path for path in resource.device_host_paths() if not under(root, path).exists()]
        if missing:
            problems.append(f"{label}: device {', '.join(missing)} not found on this node; resource not offered")
            continue
        seen.add(resource.name)
        resources.append(resource)
    return ResourcesResult(tuple(resources), tuple(problems))


def load_resources(path: Path, root: Path = LIVE_ROOT) -> ResourcesResult:
    """Read and validate `path` (a path on this machine, not under `root`); devices under `root`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ResourcesResult((), ())
    except (OSError, UnicodeDecodeError) as err:
        return ResourcesResult((), (f"{path}: unreadable ({err}); no resources offered",))
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        return ResourcesResult((), (f"{path}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}; no resources offered",))
    return validate_resources(document, root, str(path))

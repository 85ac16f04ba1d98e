"""The Aos item config: the JSON blob an image's manifest names under ``aosItemConfig``.

Pure: bytes in, a frozen :class:`ItemConfig` out, or :class:`ItemConfigError` naming the key.
What the SM does with each key is in ../shared/INSTANCES.md ("The item config"); the keys follow
the reference parser (aos_core_cpp ``ocispec/itemconfig.cpp``). Rules, each for a reason:

- Keys are matched case-insensitively at every level, as the reference's
  ``CaseInsensitiveObjectWrapper`` does; a JSON ``null`` is the same as an absent key.
- Keys that are CM's business (``requestedResources``, ``balancingPolicy``, ``runtimes``,
  ``allowedConnections``, ``alertRules``, ``skipResourceLimits``, ``author``, ``created``...) are
  not read, so a newer CM's extra keys never fail an instance.
- Every value the SM uses is checked (type and range) and a bad one fails the instance with
  ``invalidArgument`` naming the key: running a service without the limits its author asked for
  would be worse than not running it.
- Durations take the agent's syntax (``agent/durations.py``): ISO 8601 as the reference writes
  them (``PT5S``), Go-like (``1m30s``) or seconds.
- ``resources`` entries are names (the reference's form) or ``{name, mode}`` objects; ``mode``
  narrows the device access (``rwm``) the resources file grants.
- ``permissions`` is kept raw for IAM: the reference's list of ``{name, permissions}`` becomes a
  mapping name -> permissions; an object is kept as it is.
"""

from __future__ import annotations

import json
import math
import re
import types
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

from ..durations import parse_duration
from ..errors import InvalidArgument, ItemConfigError

# Reference defaults (INSTANCES.md "Running and watching").
DEFAULT_START_INTERVAL = 5.0
DEFAULT_START_BURST = 3
DEFAULT_RESTART_INTERVAL = 1.0

_INT64_MAX = 2**63 - 1
_DEVICE_MODE = re.compile(r"[rwm]{1,3}")
# HOST_NAME_MAX is 64 (limits.h); labels as RFC 1123, with the underscore many images use anyway.
_HOSTNAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]{0,62}[A-Za-z0-9_])?")
# A sysctl key as runc accepts it: dotted (or slashed) names, no spaces, no climbing out.
_SYSCTL_KEY = re.compile(r"[A-Za-z0-9_-]+([./][A-Za-z0-9_-]+)*")


@dataclass(frozen=True)
class Quotas:
    """Limits in the units the item config uses: DMIPS, bytes, counts, kbit/s, bytes per day."""

    cpu_dmips_limit: Optional[int] = None
    ram_limit: Optional[int] = None
    pids_limit: Optional[int] = None
    no_file_limit: Optional[int] = None
    tmp_limit: Optional[int] = None
    download_speed: Optional[int] = None
    upload_speed: Optional[int] = None
    download_limit: Optional[int] = None
    upload_limit: Optional[int] = None


@dataclass(frozen=True)
class ResourceRequest:
    """A resource of ``resourcesConfigFile`` the item asks for; ``mode`` (a subset of ``rwm``, in
    that order) narrows its devices' access, None keeps what the resources file grants."""

    name: str
    mode: Optional[str] = None


@dataclass(frozen=True)
class RunParameters:
    start_interval: float = DEFAULT_START_INTERVAL  # seconds
    start_burst: int = DEFAULT_START_BURST
    restart_interval: float = DEFAULT_RESTART_INTERVAL  # seconds


def _frozen(mapping: Dict[str, Any]) -> Mapping[str, Any]:
    return types.MappingProxyType(mapping)


@dataclass(frozen=True)
class ItemConfig:
    hostname: Optional[str] = None
    sysctl: Mapping[str, str] = field(default_factory=lambda: _frozen({}))
    quotas: Quotas = Quotas()
    resources: Tuple[ResourceRequest, ...] = ()
    run_parameters: RunParameters = RunParameters()
    offline_ttl: Optional[float] = None  # seconds; None: runs whatever the cloud connection
    permissions: Mapping[str, Any] = field(default_factory=lambda: _frozen({}))


# --- helpers --------------------------------------------------------------------------------------


def _folded(value: Dict[str, Any]) -> Dict[str, Any]:
    """The object with lower-cased keys and nulls dropped (null = absent)."""
    return {key.lower(): item for key, item in value.items() if item is not None}


def _object(value: Any, key: str) -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise ItemConfigError(key, f"expected an object, got {_show(value)}")
    return _folded(value)


def _show(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _integer(value: Any, key: str, low: int) -> int:
    # JSON writers may emit 1000.0 for an integer quantity; a fraction is an error.
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ItemConfigError(key, f"expected an integer, got {_show(value)}")
    if not low <= value <= _INT64_MAX:
        raise ItemConfigError(key, f"{value} is out of range (at least {low})")
    return value


def _seconds(value: Any, key: str) -> float:
    try:
        return parse_duration(value).total_seconds()
    except InvalidArgument as err:
        raise ItemConfigError(key, str(err)) from err


# --- sections -------------------------------------------------------------------------------------

# Limits where 0 would make the service unusable (no memory, no processes, no files, no CPU):
# refused rather than guessed to mean "unlimited".
_POSITIVE_QUOTAS = (("cpudmipslimit", "cpuDMIPSLimit", "cpu_dmips_limit"), ("ramlimit", "ramLimit", "ram_limit"),
                    ("pidslimit", "pidsLimit", "pids_limit"), ("nofilelimit", "noFileLimit", "no_file_limit"),
                    ("tmplimit", "tmpLimit", "tmp_limit"))
# Network quotas (NETWORK.md): 0 is a legal, if harsh, limit.
_NETWORK_QUOTAS = (("downloadspeed", "downloadSpeed", "download_speed"), ("uploadspeed", "uploadSpeed", "upload_speed"),
                   ("downloadlimit", "downloadLimit", "download_limit"), ("uploadlimit", "uploadLimit", "upload_limit"))


def _quotas(value: Any) -> Quotas:
    quotas = _object(value, "quotas")
    fields: Dict[str, int] = {}
    for keys, low in ((_POSITIVE_QUOTAS, 1), (_NETWORK_QUOTAS, 0)):
        for folded, name, attribute in keys:
            if folded in quotas:
                fields[attribute] = _integer(quotas[folded], f"quotas.{name}", low)
    return Quotas(**fields)


def _run_parameters(value: Any) -> RunParameters:
    params = _object(value, "runParameters")
    start_interval = DEFAULT_START_INTERVAL
    if "startinterval" in params:
        start_interval = _seconds(params["startinterval"], "runParameters.startInterval")
        if start_interval <= 0:
            raise ItemConfigError("runParameters.startInterval", "must be longer than zero")
    start_burst = DEFAULT_START_BURST
    if "startburst" in params:
        # 0 takes the default like an absent key: a limit of zero starts would never start it.
        start_burst = _integer(params["startburst"], "runParameters.startBurst", 0) or DEFAULT_START_BURST
    restart_interval = DEFAULT_RESTART_INTERVAL
    if "restartinterval" in params:
        restart_interval = _seconds(params["restartinterval"], "runParameters.restartInterval")
    return RunParameters(start_interval, start_burst, restart_interval)


def _hostname(value: Any) -> str:
    if not isinstance(value, str) or not _HOSTNAME.fullmatch(value):
        raise ItemConfigError("hostname", f"{_show(value)} is not a host name (letters, digits, . - _; at most 64)")
    return value


def _sysctl(value: Any) -> Mapping[str, str]:
    entries: Dict[str, str] = {}
    if not isinstance(value, dict):
        raise ItemConfigError("sysctl", f"expected an object, got {_show(value)}")
    for name, setting in value.items():
        if setting is None:
            continue
        key = f"sysctl.{name}"
        if not _SYSCTL_KEY.fullmatch(name):
            raise ItemConfigError(key, "is not a sysctl name")
        # The reference converts numbers to their text; the kernel reads text either way.
        if isinstance(setting, bool) or not isinstance(setting, (str, int, float)):
            raise ItemConfigError(key, f"expected a string or a number, got {_show(setting)}")
        if isinstance(setting, float) and not math.isfinite(setting):
            raise ItemConfigError(key, "is not finite")
        text = setting if isinstance(setting, str) else str(setting)
        if "\0" in text or "\n" in text:
            raise ItemConfigError(key, "a value may not hold NUL or a newline")
        entries[name] = text
    return _frozen(entries)


def _resource(value: Any, position: int) -> ResourceRequest:
    key = f"resources[{position}]"
    mode: Optional[str] = None
    if isinstance(value, dict):
        entry = _folded(value)
        name = entry.get("name")
        raw_mode = entry.get("mode")
        if raw_mode is not None:
            valid = isinstance(raw_mode, str) and _DEVICE_MODE.fullmatch(raw_mode) is not None
            if not valid or len(set(raw_mode)) != len(raw_mode):
                raise ItemConfigError(f"{key}.mode", f"{_show(raw_mode)} is not a device access (letters of rwm)")
            mode = "".join(letter for letter in "rwm" if letter in raw_mode)
    else:
        name = value
    if not isinstance(name, str) or not name.strip():
        raise ItemConfigError(f"{key}.name" if isinstance(value, dict) else key,
                              f"expected a resource name, got {_show(name)}")
    return ResourceRequest(name, mode)


def _resources(value: Any) -> Tuple[ResourceRequest, ...]:
    if not isinstance(value, list):
        raise ItemConfigError("resources", f"expected a list, got {_show(value)}")
    requests = tuple(_resource(item, i) for i, item in enumerate(value) if item is not None)
    seen: Dict[str, int] = {}
    for position, request in enumerate(requests):
        if request.name in seen:
            raise ItemConfigError(f"resources[{position}]", f"{request.name!r} is requested twice")
        seen[request.name] = position
    return requests


def _permissions(value: Any) -> Mapping[str, Any]:
    if isinstance(value, dict):
        return _frozen(dict(value))
    if not isinstance(value, list):
        raise ItemConfigError("permissions", f"expected a list or an object, got {_show(value)}")
    permissions: Dict[str, Any] = {}
    for position, item in enumerate(value):
        if not isinstance(item, dict):
            raise ItemConfigError(f"permissions[{position}]", f"expected an object, got {_show(item)}")
        entry = _folded(item)
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise ItemConfigError(f"permissions[{position}].name", f"expected a name, got {_show(name)}")
        permissions[name] = entry.get("permissions", [])
    return _frozen(permissions)


def _offline_ttl(value: Any) -> Optional[float]:
    seconds = _seconds(value, "offlineTTL")
    # The reference writes the key only when it is positive: zero means "no TTL".
    return seconds if seconds > 0 else None


# --- entry point ----------------------------------------------------------------------------------


def parse_item_config(data: bytes) -> ItemConfig:
    """The item config in ``data``; raises ItemConfigError (invalidArgument) naming the bad key."""
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise ItemConfigError("(document)", f"not valid JSON: {err}") from err
    config = _object(document, "(document)")
    fields: Dict[str, Any] = {}
    if "hostname" in config:
        fields["hostname"] = _hostname(config["hostname"])
    if "sysctl" in config:
        fields["sysctl"] = _sysctl(config["sysctl"])
    if "quotas" in config:
        fields["quotas"] = _quotas(config["quotas"])
    if "resources" in config:
        fields["resources"] = _resources(config["resources"])
    if "runparameters" in config:
        fields["run_parameters"] = _run_parameters(config["runparameters"])
    if "offlinettl" in config:
        fields["offline_ttl"] = _offline_ttl(config["offlinettl"])
    if "permissions" in config:
        fields["permissions"] = _permissions(config["permissions"])
    return ItemConfig(**fields)


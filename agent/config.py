"""The SM's configuration file: one JSON object with the reference key names (PROTOCOL.md).

Keys are case-insensitive, as in the reference SM. A value of the wrong type or out of range is a
``ConfigError`` naming the key (the CLI exits with code 2 on it); an unknown key is a warning
only, so that a config written for a newer agent still starts an older one.

Parsing is pure: text in, a typed config or a ConfigError out. It never looks at the host (no
cgroups, ``$PATH``, machine-id or journald socket): what is left unset here (``node_id`` "",
``runtimes`` (), ``system_log`` None) is discovered once, under the probe root, by
agent/registration.py. tests/test_config.py checks this module's imports.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .durations import parse_duration
from .errors import AosError, ConfigError

TLS_MODES = ("mtls", "tls", "plaintext")
OCI_RUNTIMES = ("crun", "runc")

# Every key we understand, spelled as the reference spells it, with its nested keys (a list of one
# object: the keys of each entry of a list). Lookups are case-insensitive (``_KNOWN``); the
# spelling is what a warning suggests.
_SPELLED: Dict[str, Any] = {
    "nodeId": None,
    "cmServerURL": None,
    "cmReconnectTimeout": None,
    "cmReconnectMaxTimeout": None,
    "tlsMode": None,
    "caCert": None,
    "certFile": None,
    "keyFile": None,
    "certStorage": None,
    "iamProtectedServerURL": None,
    "iamPublicServerURL": None,
    "workingDir": None,
    "nodeConfigFile": None,
    "resourcesConfigFile": None,
    "maxDMIPS": None,
    "systemReserve": {"dmipsPercent": None, "ramPercent": None},
    "cgroupParent": None,
    "monitoring": {"pollPeriod": None, "averageWindow": None, "partitions": [{"name": None, "path": None}],
                   "uplinkInterfaces": None},
    "logging": {"maxPartSize": None, "maxPartCount": None, "systemLog": None},
    "runtimes": [{"type": None, "allowedDMIPS": None, "allowedRAM": None}],
    "journalAlerts": {"filter": None, "systemAlertPriority": None, "serviceAlertPriority": None},
    "imageTTL": None,
    "updateItemTTL": None,
    "imagesPartLimit": None,
    "storageDir": None,
    "stateDir": None,
    "rootfsHostDirs": None,
    "architecture": None,
    "architectureVariant": None,
    "osVersion": None,
    "network": {"enabled": None},
}


@dataclass(frozen=True)
class _Key:
    spelling: str
    nested: Optional[Dict[str, "_Key"]] = None  # the keys of its object, or of each list entry
    is_list: bool = False


def _by_lower_case(spelled: Mapping[str, Any]) -> Dict[str, _Key]:
    known = {}
    for key, nested in spelled.items():
        if isinstance(nested, list):
            known[key.lower()] = _Key(key, _by_lower_case(nested[0]), is_list=True)
        else:
            known[key.lower()] = _Key(key, _by_lower_case(nested) if isinstance(nested, dict) else None)
    return known


_KNOWN = _by_lower_case(_SPELLED)

# CM's fixed-size fields (PROTOCOL.md "Limits of the real CM"): a longer id or arch makes the real
# CM drop the whole SMInfo, a longer version aborts a debug CM.
MAX_ID_CHARS = 64
MAX_ARCH_CHARS = 16
MAX_OS_VERSION_CHARS = 32

# The first reconnect wait is this share of cmReconnectTimeout (0.5 s by default): short, so a
# CM restart is noticed at once; the backoff then doubles up to the cap.
FIRST_WAIT_SHARE = 1 / 20

JOURNALD = "journald"
UPDATE_ITEM_TTL = 30 * 24 * 3600.0  # the reference's default updateItemTTL (INSTANCES.md "The image")


# The key of a ConfigError about the file as a whole (not JSON, not an object, unreadable).
WHOLE_FILE = "(file)"


class ConfigFileError(ConfigError):
    """A ConfigError found in a config file: the message starts with the file's path, so the
    operator sees which file to fix (issue 16: a bare "(file)" named none). ``key`` stays the
    offending key (``WHOLE_FILE`` for the file as a whole)."""

    def __init__(self, path: Path, key: str, message: str) -> None:
        super().__init__(key, message)
        self.path = Path(path)
        where = str(path) if key == WHOLE_FILE else f"{path}: {key}"
        self.message = f"{where}: {message}"
        self.args = (self.message,)

    @classmethod
    def of(cls, path: Path, error: ConfigError) -> "ConfigFileError":
        """``error`` (from parsing the file's text) with the file named."""
        text, lead = str(error), f"{error.key}: "
        return cls(path, error.key, text[len(lead):] if text.startswith(lead) else text)


@dataclass(frozen=True)
class JournalAlertsConfig:
    """``journalAlerts``: journal entries at or above a priority (syslog numbers: 0 emerg ... 7
    debug; "above" means a lower number) become alerts, except those whose message matches one of
    ``filters`` (Python regular expressions, searched anywhere in the message)."""

    filters: Tuple[str, ...] = ()
    system_alert_priority: int = 3
    service_alert_priority: int = 4


@dataclass(frozen=True)
class RuntimeSettings:
    """One ``runtimes[]`` entry. ``allowed_dmips``/``allowed_ram`` (bytes) reserve a fixed budget
    for the runtime; CM then ignores system load for it (PROTOCOL.md "Capacity semantics"), so
    they are None unless the operator sets them."""

    type: str
    allowed_dmips: Optional[int] = None
    allowed_ram: Optional[int] = None


@dataclass(frozen=True)
class AgentConfig:
    node_id: str  # "" when not configured: discovered (machine-id, else hostname) under the root
    cm_server_url: Optional[str] = None
    cm_reconnect_timeout: float = 10.0
    cm_reconnect_max_timeout: Optional[float] = None  # the backoff cap; None: cmReconnectTimeout
    tls_mode: str = "mtls"
    ca_cert: Optional[Path] = None
    cert_file: Optional[Path] = None
    key_file: Optional[Path] = None
    working_dir: Path = Path("/var/aos/servicemanager")
    node_config_file: Path = Path("/var/aos/servicemanager/aos_node.cfg")
    resources_config_file: Path = Path("/etc/aos/resources.cfg")
    max_dmips: Optional[int] = None
    reserve_dmips_percent: float = 0.0
    reserve_ram_percent: float = 0.0
    cgroup_parent: str = "aos-sm"
    poll_period: float = 35.0
    average_window: float = 35.0
    # (name, path) whose filesystem's used bytes monitoring reports; empty: the working dir.
    monitoring_partitions: Tuple[Tuple[str, Path], ...] = ()
    # Interfaces whose traffic is download/upload; None: those with a default route.
    uplink_interfaces: Optional[Tuple[str, ...]] = None
    max_part_size: int = 262144
    max_part_count: int = 80
    system_log: Optional[str] = None  # None: discovered (journald where it runs, else the file)
    journal_alerts: JournalAlertsConfig = JournalAlertsConfig()
    runtimes: Tuple[str, ...] = ()  # (): the OCI runtimes discovered on the node
    runtime_settings: Tuple[RuntimeSettings, ...] = ()
    architecture: Optional[str] = None  # GOARCH override of the probe (the IAM key name)
    architecture_variant: Optional[str] = None
    os_version: Optional[str] = None  # os_info.version as configured; else the kernel release
    image_ttl: float = UPDATE_ITEM_TTL  # updateItemTTL
    images_part_limit: float = 100.0  # imagesPartLimit: percent of its partition the image store may use (0: no cap)
    # The node's IAM (../shared/IAM.md): with iam_public_server_url set, node identity, capacity
    # and the client certificate (of type cert_storage) come from IAM, not from files and probes.
    iam_public_server_url: Optional[str] = None
    iam_protected_server_url: Optional[str] = None
    cert_storage: str = "sm"
    storage_dir: Path = Path("/var/aos/servicemanager/storages")
    state_dir: Path = Path("/var/aos/servicemanager/states")
    # The host's top-level entries every instance sees under its image (agent/launcher/rootfs.py).
    rootfs_host_dirs: Tuple[str, ...] = ("bin", "sbin", "lib", "lib64", "usr")
    # The network manager (NETWORK.md): every instance in its own network namespace. False runs
    # instances in the agent's own network, as before the network manager existed.
    network_enabled: bool = True
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    warnings: Tuple[str, ...] = ()

    @property
    def reconnect_cap(self) -> float:
        """The longest wait between two connect attempts: ``cmReconnectMaxTimeout``, by default
        ``cmReconnectTimeout``, so the node is back within it once CM returns (PROTOCOL.md)."""
        if self.cm_reconnect_max_timeout is not None:
            return self.cm_reconnect_max_timeout
        return self.cm_reconnect_timeout

    @property
    def reconnect_first_wait(self) -> float:
        """The wait after the first failure; the backoff grows from it to ``reconnect_cap``."""
        return min(self.cm_reconnect_timeout * FIRST_WAIT_SHARE, self.reconnect_cap)

    @property
    def uses_iam(self) -> bool:
        return self.iam_public_server_url is not None

    @property
    def certificate_files(self) -> Tuple[Path, ...]:
        """The files whose renewal on disk makes the agent reconnect."""
        return tuple(p for p in (self.ca_cert, self.cert_file, self.key_file) if p is not None)


def _lower_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k).lower(): _lower_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_lower_keys(v) for v in value]
    return value


def _object_paths(known: Mapping[str, _Key], prefix: str = "") -> List[str]:
    """Every key path through objects (not into list entries)."""
    paths = []
    for key in known.values():
        paths.append(prefix + key.spelling)
        if key.nested is not None and not key.is_list:
            paths += _object_paths(key.nested, f"{prefix}{key.spelling}.")
    return paths


def _suggestion(key: str, known: Mapping[str, _Key], prefix: str) -> Optional[str]:
    """The known key ``key`` was probably meant to be: a near spelling at the same level
    (difflib), else a nested key of that name placed at the wrong level (``pollPeriod`` at the
    top instead of ``monitoring.pollPeriod``)."""
    lowered = key.lower()
    close = difflib.get_close_matches(lowered, list(known), n=1, cutoff=0.8)
    if close:
        return prefix + known[close[0]].spelling
    elsewhere = [path for path in _object_paths(_KNOWN) if path.lower().rsplit(".", 1)[-1] == lowered]
    return elsewhere[0] if len(elsewhere) == 1 else None


def _unknown_key_warnings(data: Mapping[str, Any], known: Mapping[str, _Key] = _KNOWN,
                          prefix: str = "") -> List[str]:
    """One warning per key of ``data`` (as written in the file, case kept) that is not known,
    with the known key it resembles; and per key given twice in different cases (the last one
    is used, as the reference's case-insensitive lookup would take one of them)."""
    warnings = []
    seen: Dict[str, str] = {}
    for key, value in data.items():
        written = str(key)
        lowered = written.lower()
        if lowered in seen:
            warnings.append(f"configuration key {prefix + written!r} repeats {prefix + seen[lowered]!r} "
                            f"(keys are case-insensitive): the last one is used")
        seen[lowered] = written
        entry = known.get(lowered)
        if entry is None:
            hint = _suggestion(written, known, prefix)
            warnings.append(f"unknown configuration key {prefix + written!r} ignored"
                            + (f" (did you mean {hint!r}?)" if hint else ""))
        elif entry.nested is not None and entry.is_list and isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, dict):
                    warnings += _unknown_key_warnings(item, entry.nested, f"{prefix}{entry.spelling}[{index}].")
        elif entry.nested is not None and isinstance(value, dict):
            warnings += _unknown_key_warnings(value, entry.nested, f"{prefix}{entry.spelling}.")
    return warnings


class _Reader:
    """Typed access to the lower-cased config, raising ConfigError with the reference key name."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = data

    def get(self, key: str) -> Any:
        node: Any = self._data
        for part in key.lower().split("."):
            if not isinstance(node, dict):
                return None
            node = node.get(part)
        return node

    def string(self, key: str) -> Optional[str]:
        value = self.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(key, f"expected a non-empty string, got {json.dumps(value)}")
        return value.strip()

    def path(self, key: str) -> Optional[Path]:
        value = self.string(key)
        return Path(value) if value is not None else None

    def seconds(self, key: str, default: float, *, positive: bool = True) -> float:
        value = self.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ConfigError(key, f"expected a duration like \"10s\" or \"PT10S\", got {json.dumps(value)}")
        try:
            seconds = parse_duration(value).total_seconds()
        except AosError as err:
            raise ConfigError(key, str(err)) from err
        if positive and seconds <= 0:
            raise ConfigError(key, f"must be longer than zero, got {json.dumps(value)}")
        return seconds

    def number(self, key: str, default: float, *, low: float, high: float) -> float:
        value = self.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(key, f"expected a number, got {json.dumps(value)}")
        if not low <= value <= high:
            raise ConfigError(key, f"must be between {low:g} and {high:g}, got {value}")
        return float(value)

    def integer(self, key: str, default: int, *, low: int, high: int) -> int:
        value = self.optional_integer(key, low=low, high=high)
        return default if value is None else value

    def optional_integer(self, key: str, *, low: int, high: int) -> Optional[int]:
        value = self.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected a whole number, got {json.dumps(value)}")
        if not low <= value <= high:
            raise ConfigError(key, f"must be between {low} and {high}, got {value}")
        return value


def _system_log(reader: _Reader) -> Optional[str]:
    value = reader.string("logging.systemLog")
    if value is None:
        return None
    if value.lower() == JOURNALD:
        return JOURNALD
    if not value.startswith("/"):
        raise ConfigError("logging.systemLog", f"expected \"journald\" or an absolute file path, got {value!r}")
    return value


def _journal_alerts(reader: _Reader) -> JournalAlertsConfig:
    raw = reader.get("journalAlerts")
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError("journalAlerts", f"expected an object, got {json.dumps(raw)}")
    patterns = reader.get("journalAlerts.filter")
    if patterns is None:
        patterns = []
    if not isinstance(patterns, list):
        raise ConfigError("journalAlerts.filter", f"expected a list of regular expressions, got {json.dumps(patterns)}")
    for index, pattern in enumerate(patterns):
        if not isinstance(pattern, str):
            raise ConfigError(f"journalAlerts.filter[{index}]", f"expected a regular expression, got {json.dumps(pattern)}")
        try:
            re.compile(pattern)
        except re.error as err:
            raise ConfigError(f"journalAlerts.filter[{index}]", f"not a valid regular expression: {err}") from err
    return JournalAlertsConfig(
        filters=tuple(patterns),
        system_alert_priority=reader.integer("journalAlerts.systemAlertPriority", 3, low=0, high=7),
        service_alert_priority=reader.integer("journalAlerts.serviceAlertPriority", 4, low=0, high=7),
    )


def _runtimes(reader: _Reader) -> Tuple[RuntimeSettings, ...]:
    value = reader.get("runtimes")
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError("runtimes", f"expected a list of {{\"type\": ...}}, got {json.dumps(value)}")
    runtimes: List[RuntimeSettings] = []
    for index, entry in enumerate(value):
        kind = entry.get("type") if isinstance(entry, dict) else None
        if not isinstance(kind, str) or not kind.strip():
            raise ConfigError(f"runtimes[{index}].type", f"expected a runtime type, got {json.dumps(entry)}")
        assert isinstance(entry, dict)
        if kind.strip() in (known.type for known in runtimes):
            raise ConfigError(f"runtimes[{index}].type", f"runtime {kind.strip()!r} is listed twice")
        item = _Reader(entry)
        runtimes.append(RuntimeSettings(
            type=kind.strip(),
            allowed_dmips=_positive_or_none(item, "allowedDMIPS", f"runtimes[{index}].allowedDMIPS"),
            allowed_ram=_positive_or_none(item, "allowedRAM", f"runtimes[{index}].allowedRAM"),
        ))
    return tuple(runtimes)


def _positive_or_none(reader: _Reader, key: str, name: str) -> Optional[int]:
    value = reader.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**63:
        raise ConfigError(name, f"expected a positive whole number, got {json.dumps(value)}")
    return value


def _bounded(reader: _Reader, key: str, limit: int) -> Optional[str]:
    """A string CM keeps in a fixed-size field: refused when longer than CM accepts."""
    value = reader.string(key)
    if value is not None and len(value) > limit:
        raise ConfigError(key, f"{len(value)} chars; CM accepts at most {limit}: {value[:limit]}...")
    return value


DEFAULT_PARTITION = "workingDir"


def _monitoring_partitions(reader: _Reader, working_dir: Path) -> Tuple[Tuple[str, Path], ...]:
    key = "monitoring.partitions"
    value = reader.get(key)
    if value is None:
        return ((DEFAULT_PARTITION, working_dir),)
    if not isinstance(value, list):
        raise ConfigError(key, f"expected a list of {{\"name\": ..., \"path\": ...}}, got {json.dumps(value)}")
    partitions: List[Tuple[str, Path]] = []
    for index, entry in enumerate(value):
        name = entry.get("name") if isinstance(entry, dict) else None
        path = entry.get("path") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name.strip() or not isinstance(path, str) or not path.strip():
            raise ConfigError(f"{key}[{index}]", f"expected {{\"name\": ..., \"path\": ...}}, got {json.dumps(entry)}")
        if name.strip() in (existing for existing, _ in partitions):
            raise ConfigError(f"{key}[{index}].name", f"partition {name.strip()!r} is listed twice")
        partitions.append((name.strip(), Path(path.strip())))
    return tuple(partitions)


def _uplink_interfaces(reader: _Reader) -> Optional[Tuple[str, ...]]:
    key = "monitoring.uplinkInterfaces"
    value = reader.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(key, f"expected a list of interface names, got {json.dumps(value)}")
    return tuple(v.strip() for v in value)


def _rootfs_host_dirs(reader: _Reader) -> Tuple[str, ...]:
    key = "rootfsHostDirs"
    value = reader.get(key)
    if value is None:
        return AgentConfig.rootfs_host_dirs
    if not isinstance(value, list) or not all(
            isinstance(v, str) and v and v not in (".", "..") and "/" not in v and "\0" not in v for v in value):
        raise ConfigError(key, f"expected a list of top-level names such as \"usr\", got {json.dumps(value)[:80]}")
    return tuple(dict.fromkeys(value))


def _flag(reader: _Reader, key: str, default: bool) -> bool:
    value = reader.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(key, f"expected true or false, got {json.dumps(value)}")
    return value


def parse_config(text: str) -> AgentConfig:
    """Parse the JSON text of a config file; raises ConfigError naming the bad key. Pure: reads
    nothing but ``text``."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(WHOLE_FILE, f"not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(WHOLE_FILE, "expected a JSON object at the top level")
    warnings = _unknown_key_warnings(data)
    data = _lower_keys(data)
    reader = _Reader(data)

    tls_mode = (reader.string("tlsMode") or "mtls").lower()
    if tls_mode not in TLS_MODES:
        raise ConfigError("tlsMode", f"expected one of {', '.join(TLS_MODES)}, got {tls_mode!r}")
    cm_server_url = reader.string("cmServerURL")
    ca_cert, cert_file, key_file = reader.path("caCert"), reader.path("certFile"), reader.path("keyFile")
    iam_public = reader.string("iamPublicServerURL")
    if cm_server_url and tls_mode == "mtls":
        # With IAM the client certificate comes from IAM's certStorage on every connect.
        required = (("caCert", ca_cert),) if iam_public else (("caCert", ca_cert), ("certFile", cert_file),
                                                             ("keyFile", key_file))
        for key, value in required:
            if value is None:
                raise ConfigError(key, "required with tlsMode \"mtls\" (set tlsMode \"plaintext\" for development)")
    if iam_public and tls_mode != "plaintext" and ca_cert is None:
        # Without it IAM would be reached in plaintext: a forgotten key must not become a
        # development mode (issue 16).
        raise ConfigError("caCert", f"required with iamPublicServerURL and tlsMode {tls_mode!r}: IAM is verified "
                                    "with it (set tlsMode \"plaintext\" for development)")
    working_dir = reader.path("workingDir") or AgentConfig.working_dir
    reconnect = reader.seconds("cmReconnectTimeout", 10.0)
    reconnect_max: Optional[float] = None
    if reader.get("cmReconnectMaxTimeout") is not None:
        reconnect_max = reader.seconds("cmReconnectMaxTimeout", reconnect)
        if reconnect_max > reconnect:
            warnings.append(
                f"cmReconnectMaxTimeout {reconnect_max:g}s is longer than cmReconnectTimeout {reconnect:g}s: "
                "after an outage the node may re-register that late, and CM marks a node in error when "
                "its SM is not back within 1 minute of CM's start")
    runtimes = _runtimes(reader)
    return AgentConfig(
        node_id=_bounded(reader, "nodeId", MAX_ID_CHARS) or "",
        cm_server_url=cm_server_url,
        cm_reconnect_timeout=reconnect,
        cm_reconnect_max_timeout=reconnect_max,
        tls_mode=tls_mode,
        ca_cert=ca_cert,
        cert_file=cert_file,
        key_file=key_file,
        working_dir=working_dir,
        node_config_file=reader.path("nodeConfigFile") or working_dir / "aos_node.cfg",
        resources_config_file=reader.path("resourcesConfigFile") or AgentConfig.resources_config_file,
        max_dmips=reader.optional_integer("maxDMIPS", low=1, high=10**9),
        reserve_dmips_percent=reader.number("systemReserve.dmipsPercent", 0.0, low=0, high=99),
        reserve_ram_percent=reader.number("systemReserve.ramPercent", 0.0, low=0, high=99),
        cgroup_parent=reader.string("cgroupParent") or AgentConfig.cgroup_parent,
        poll_period=reader.seconds("monitoring.pollPeriod", 35.0),
        average_window=reader.seconds("monitoring.averageWindow", 35.0),
        monitoring_partitions=_monitoring_partitions(reader, working_dir),
        uplink_interfaces=_uplink_interfaces(reader),
        max_part_size=reader.integer("logging.maxPartSize", 262144, low=1024, high=64 * 1024 * 1024),
        max_part_count=reader.integer("logging.maxPartCount", 80, low=1, high=100000),
        system_log=_system_log(reader),
        journal_alerts=_journal_alerts(reader),
        runtimes=tuple(runtime.type for runtime in runtimes),
        runtime_settings=runtimes,
        architecture=_bounded(reader, "architecture", MAX_ARCH_CHARS),
        architecture_variant=_variant(reader),
        os_version=_bounded(reader, "osVersion", MAX_OS_VERSION_CHARS),
        image_ttl=_update_item_ttl(reader),
        images_part_limit=reader.number("imagesPartLimit", 100.0, low=0, high=100),
        iam_public_server_url=iam_public,
        iam_protected_server_url=reader.string("iamProtectedServerURL"),
        cert_storage=reader.string("certStorage") or AgentConfig.cert_storage,
        storage_dir=reader.path("storageDir") or working_dir / "storages",
        state_dir=reader.path("stateDir") or working_dir / "states",
        rootfs_host_dirs=_rootfs_host_dirs(reader),
        network_enabled=_flag(reader, "network.enabled", True),
        raw=data,
        warnings=tuple(warnings),
    )


def _update_item_ttl(reader: _Reader) -> float:
    """``updateItemTTL`` (the reference's name, default 30 days); ``imageTTL``, this agent's older
    name, is still read when the new one is absent."""
    if reader.get("updateItemTTL") is not None:
        return reader.seconds("updateItemTTL", UPDATE_ITEM_TTL, positive=False)
    return reader.seconds("imageTTL", UPDATE_ITEM_TTL, positive=False)


def _variant(reader: _Reader) -> Optional[str]:
    """``architectureVariant``; "" is a real value here (amd64 has no variant)."""
    value = reader.get("architectureVariant")
    if value == "":
        return ""
    return _bounded(reader, "architectureVariant", MAX_ARCH_CHARS)


MAX_CONFIG_BYTES = 1024 * 1024


def load_config(path: Path) -> AgentConfig:
    """Read and parse a config file; a missing, unreadable, oversized or malformed file, or a bad
    value in it, is a ConfigFileError whose message starts with the file's path."""
    try:
        size = Path(path).stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigFileError(path, WHOLE_FILE, f"{size} bytes; a config is at most {MAX_CONFIG_BYTES}")
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigFileError(path, WHOLE_FILE, f"cannot read: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise ConfigFileError(path, WHOLE_FILE, f"not UTF-8 text: {err}") from err
    try:
        return parse_config(text)
    except ConfigFileError:
        raise
    except ConfigError as err:
        raise ConfigFileError.of(path, err) from err

"""Node config: parsing, validation and the version rule (pure; no file I/O, no clock).

Theory of operation
-------------------
CM sends the node config as JSON text plus a version (PROTOCOL.md, "Node config JSON").
:func:`plan_node_config` turns ``(installed version, text, message version)`` into a validated
:class:`NodeConfig` or raises the :class:`AosError` whose code CM must see:

- text over :data:`MAX_NODE_CONFIG_BYTES`, bytes that are not UTF-8, malformed JSON, a wrong
  type, a value outside the range the wire or the monitor can carry (``priority`` and
  ``download``/``upload`` thresholds are uint64, percents lie in 0..100, ``minTimeout`` fits a
  protobuf Duration), a missing ``nodeGroupSubject.codename`` or an invalid semver →
  InvalidArgument (6), with the message naming the key path first
  (``alertRules.cpu.maxThreshold: expected a number, got "high"``): CM keeps 64 characters;
- with a config installed: the same version → AlreadyExist (8), a lower one → WrongState (9).

Keys match case-insensitively at every level and ``null`` counts as absent, as in the reference
(``CaseInsensitiveObjectWrapper`` in aos_core_cpp). Unknown keys are ignored for forward
compatibility but reported in :attr:`ParsedNodeConfig.unknown_keys` so that the caller can log
them. Two keys that differ only in case are ambiguous and rejected.
"""

from __future__ import annotations

import datetime
import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from .durations import parse_duration
from .errors import AlreadyExist, InvalidArgument, WrongState
from .semver import compare_semver, parse_semver

# CM's node configs are a few KiB; 1 MiB bounds memory and parse time against a hostile peer.
MAX_NODE_CONFIG_BYTES = 1 << 20

# The wire's own ranges: ``priority`` is a uint64 in the reference's NodeConfig, and download/upload
# thresholds travel as AlertRulePoints' uint64 (servicemanager-v5.tsv); a value beyond them
# would be truncated or refused by protobuf later, far from the request that brought it.
UINT64_MAX = (1 << 64) - 1
# cpu/ram/partition thresholds are percents of the resource (PROTOCOL.md "Alert rules").
MAX_PERCENT = 100.0
# google.protobuf.Duration's documented range (about 10,000 years), which AlertRule durations use.
MAX_DURATION = datetime.timedelta(seconds=315_576_000_000)


class NodeConfigState:
    """``NodeConfigStatus.state`` strings, exactly as CM expects them (PROTOCOL.md)."""

    ABSENT = "absent"
    INSTALLED = "installed"
    FAILED = "failed"


@dataclass(frozen=True)
class PercentRule:
    """cpu/ram/partition rule; thresholds in percent of the resource (converted by monitoring)."""

    min_timeout: datetime.timedelta
    min_threshold: float
    max_threshold: float


@dataclass(frozen=True)
class PartitionRule:
    name: str
    min_timeout: datetime.timedelta
    min_threshold: float
    max_threshold: float


@dataclass(frozen=True)
class PointsRule:
    """download/upload rule; thresholds are absolute (bytes over the traffic period)."""

    min_timeout: datetime.timedelta
    min_threshold: int
    max_threshold: int


@dataclass(frozen=True)
class AlertRules:
    ram: Optional[PercentRule] = None
    cpu: Optional[PercentRule] = None
    partitions: Tuple[PartitionRule, ...] = ()
    download: Optional[PointsRule] = None
    upload: Optional[PointsRule] = None


@dataclass(frozen=True)
class ResourceRatios:
    cpu: Optional[float] = None
    ram: Optional[float] = None
    storage: Optional[float] = None
    state: Optional[float] = None


@dataclass(frozen=True)
class NodeConfig:
    """A validated node config. ``version`` is the effective one (message version wins)."""

    version: str
    node_group_codename: str
    node_codename: Optional[str] = None
    alert_rules: Optional[AlertRules] = None
    resource_ratios: Optional[ResourceRatios] = None
    labels: Tuple[str, ...] = ()
    priority: int = 0


@dataclass(frozen=True)
class ParsedNodeConfig:
    config: NodeConfig
    unknown_keys: Tuple[str, ...]


# --------------------------------------------------------------------------------------------
# The version rule
# --------------------------------------------------------------------------------------------


def check_version_rule(installed_version: Optional[str], requested_version: str) -> None:
    """Raise per PROTOCOL.md's version rule; with nothing installed any valid semver passes."""
    requested = parse_semver(requested_version)
    if installed_version is None:
        return
    order = compare_semver(requested, parse_semver(installed_version))
    if order == 0:
        raise AlreadyExist(f"node config version {requested_version} is already installed")
    if order < 0:
        raise WrongState(
            f"node config version {requested_version} is lower than installed {installed_version}"
        )


def plan_node_config(
    installed_version: Optional[str], node_config_text: Union[str, bytes], message_version: str
) -> ParsedNodeConfig:
    """Validate a Check/SetNodeConfig request against what is installed (None: nothing)."""
    parsed = parse_node_config(node_config_text, message_version)
    check_version_rule(installed_version, parsed.config.version)
    return parsed


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------


def decode_node_config_text(data: Union[str, bytes]) -> str:
    """The node config as text. Bytes come from a request whose ``node_config`` protobuf could
    not decode as a string (not UTF-8): they get a reply naming the first bad byte, not silence."""
    if isinstance(data, str):
        return data
    if len(data) > MAX_NODE_CONFIG_BYTES:
        raise InvalidArgument(f"node config is larger than {MAX_NODE_CONFIG_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InvalidArgument(
            f"node_config: not UTF-8 at byte {err.start} ({data[err.start:err.start + 1]!r})"
        ) from err


def parse_node_config(text: Union[str, bytes], version_override: str = "") -> ParsedNodeConfig:
    """Parse and validate node config JSON; a non-empty ``version_override`` replaces
    the JSON ``version`` (the message's field wins, PROTOCOL.md)."""
    text = decode_node_config_text(text)
    if len(text) > MAX_NODE_CONFIG_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_NODE_CONFIG_BYTES:
        raise InvalidArgument(f"node config is larger than {MAX_NODE_CONFIG_BYTES} bytes")
    root = _Object(_load_json(text), "", [])
    config = NodeConfig(
        version=_effective_version(root, version_override),
        node_group_codename=_required_codename(root),
        node_codename=_optional_codename(root),
        alert_rules=_alert_rules(root.object("alertRules")),
        resource_ratios=_resource_ratios(root.object("resourceRatios")),
        labels=_labels(root),
        priority=root.integer("priority", UINT64_MAX) or 0,
    )
    return ParsedNodeConfig(config=config, unknown_keys=tuple(root.collect_unknown()))


def _load_json(text: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_Pairs, parse_constant=_reject_constant)
    except json.JSONDecodeError as err:
        raise InvalidArgument(
            f"malformed node config JSON: {err.msg} at line {err.lineno} column {err.colno}"
        ) from err
    except RecursionError as err:
        raise InvalidArgument("malformed node config JSON: nested too deeply") from err
    except ValueError as err:
        # Python 3.11+ refuses integers over 4300 digits (int_max_str_digits) this way.
        raise InvalidArgument(f"malformed node config JSON: {err}") from err


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON (RFC 8259); Python's json accepts them unless told not to.
    raise InvalidArgument(f"malformed node config JSON: {name} is not a JSON value")


def _effective_version(root: _Object, version_override: str) -> str:
    json_version = root.string("version")
    if version_override:
        version = version_override
    elif json_version:
        version = json_version
    else:
        raise InvalidArgument("version: missing (neither the message nor the JSON has one)")
    try:
        parse_semver(version)
    except InvalidArgument as err:
        raise InvalidArgument(f"version: {err}") from err
    return version


def _required_codename(root: _Object) -> str:
    subject = root.object("nodeGroupSubject")
    if subject is None:
        raise InvalidArgument("nodeGroupSubject.codename: missing")
    codename = subject.string("codename")
    # Present but possibly empty: the reference accepts "" (PROTOCOL.md "Node config JSON").
    if codename is None:
        raise InvalidArgument("nodeGroupSubject.codename: missing")
    return codename


def _optional_codename(root: _Object) -> Optional[str]:
    node = root.object("node")
    return node.string("codename") if node is not None else None


def _labels(root: _Object) -> Tuple[str, ...]:
    items = root.array("labels")
    if items is None:
        return ()
    labels = []
    for index, item in enumerate(items):
        if not isinstance(item, str):
            raise InvalidArgument(
                f"{root.path_of('labels')}[{index}]: expected a string, got {_describe(item)}"
            )
        _check_unicode(item, f"{root.path_of('labels')}[{index}]")
        labels.append(item)
    return tuple(labels)


def _alert_rules(rules: Optional[_Object]) -> Optional[AlertRules]:
    if rules is None:
        return None
    return AlertRules(
        ram=_percent_rule(rules.object("ram")),
        cpu=_percent_rule(rules.object("cpu")),
        partitions=_partition_rules(rules),
        download=_points_rule(rules.object("download")),
        upload=_points_rule(rules.object("upload")),
    )


def _percent_rule(rule: Optional[_Object]) -> Optional[PercentRule]:
    if rule is None:
        return None
    min_timeout, low, high = _thresholds(rule, rule.percent)
    return PercentRule(min_timeout=min_timeout, min_threshold=low, max_threshold=high)


def _points_rule(rule: Optional[_Object]) -> Optional[PointsRule]:
    if rule is None:
        return None
    min_timeout, low, high = _thresholds(rule, lambda key: rule.integer(key, UINT64_MAX))
    return PointsRule(min_timeout=min_timeout, min_threshold=int(low), max_threshold=int(high))


def _partition_rules(rules: _Object) -> Tuple[PartitionRule, ...]:
    items = rules.array("partitions")
    if items is None:
        return ()
    partitions: List[PartitionRule] = []
    for index, item in enumerate(items):
        path = f"{rules.path_of('partitions')}[{index}]"
        rule = rules.element_object(item, path)
        name = rule.string("name")
        if not name:
            raise InvalidArgument(f"{rule.path_of('name')}: missing")
        if any(existing.name == name for existing in partitions):
            raise InvalidArgument(f"{rule.path_of('name')}: duplicate partition {name!r}")
        min_timeout, low, high = _thresholds(rule, rule.percent)
        partitions.append(PartitionRule(name, min_timeout, low, high))
    return tuple(partitions)


def _thresholds(
    rule: _Object, read: Callable[[str], Optional[float]]
) -> Tuple[datetime.timedelta, float, float]:
    """minTimeout (default 0: raise immediately), minThreshold, maxThreshold (both required)."""
    min_timeout = rule.duration("minTimeout") or datetime.timedelta(0)
    thresholds = []
    for key in ("minThreshold", "maxThreshold"):
        value = read(key)
        if value is None:
            raise InvalidArgument(f"{rule.path_of(key)}: missing")
        if value < 0:
            raise InvalidArgument(f"{rule.path_of(key)}: must not be negative, got {value}")
        thresholds.append(value)
    low, high = thresholds
    if low > high:
        # Hysteresis needs min <= max (PROTOCOL.md "Alert rules"), or an alert never falls.
        raise InvalidArgument(
            f"{rule.path_of('minThreshold')}: {low} is greater than maxThreshold {high}"
        )
    return min_timeout, low, high


def _resource_ratios(ratios: Optional[_Object]) -> Optional[ResourceRatios]:
    if ratios is None:
        return None
    values = {}
    for key in ("cpu", "ram", "storage", "state"):
        value = ratios.number(key)
        if value is not None and value < 0:
            raise InvalidArgument(f"{ratios.path_of(key)}: must not be negative, got {value}")
        values[key] = value
    return ResourceRatios(**values)


# --------------------------------------------------------------------------------------------
# Case-insensitive JSON objects with key paths
# --------------------------------------------------------------------------------------------


def _check_unicode(value: str, path: str) -> None:
    """JSON escapes can spell lone surrogates ("\\ud800"); no protobuf string or file name can
    carry one, so such a value would fail far from here (a monitoring send, a store write)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InvalidArgument(f"{path}: not valid Unicode (lone surrogate at {err.start})") from err


class _Pairs(List[Tuple[str, Any]]):
    """A JSON object as decoded: its (key, value) pairs in order, duplicates kept."""


def _describe(value: Any) -> str:
    """How a wrong value appears in an error message: JSON-ish, and short."""
    if isinstance(value, _Pairs):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _Object:
    """Typed, case-insensitive access to one JSON object; remembers which keys were read."""

    def __init__(self, value: Any, path: str, children: List[_Object]) -> None:
        if not isinstance(value, _Pairs):
            where = path or "node config"
            raise InvalidArgument(f"{where}: expected an object, got {_describe(value)}")
        self._path = path
        self._children = children
        children.append(self)
        self._items: Dict[str, Tuple[str, Any]] = {}
        self._read: set[str] = set()
        for key, item in value:
            folded = key.casefold()
            if folded in self._items:
                raise InvalidArgument(
                    f"{self.path_of(key)}: duplicate key (keys are case-insensitive)"
                )
            self._items[folded] = (key, item)

    def path_of(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def _get(self, key: str) -> Any:
        folded = key.casefold()
        self._read.add(folded)
        entry = self._items.get(folded)
        return None if entry is None else entry[1]

    def _wrong(self, key: str, expected: str, value: Any) -> InvalidArgument:
        return InvalidArgument(f"{self.path_of(key)}: expected {expected}, got {_describe(value)}")

    def string(self, key: str) -> Optional[str]:
        value = self._get(key)
        if value is not None and not isinstance(value, str):
            raise self._wrong(key, "a string", value)
        if value is not None:
            _check_unicode(value, self.path_of(key))
        return value

    def number(self, key: str) -> Optional[float]:
        value = self._get(key)
        if value is None:
            return None
        # bool is an int in Python but not a number in JSON.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._wrong(key, "a number", value)
        result = float(value)
        if not math.isfinite(result):
            raise self._wrong(key, "a finite number", value)
        return result

    def percent(self, key: str) -> Optional[float]:
        value = self.number(key)
        if value is not None and value > MAX_PERCENT:
            raise InvalidArgument(f"{self.path_of(key)}: a percent is at most 100, got {value:g}")
        return value

    def integer(self, key: str, maximum: int) -> Optional[int]:
        raw = self._get(key)
        if raw is None:
            return None
        value = raw
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._wrong(key, "an integer", raw)
        if value < 0:
            raise InvalidArgument(f"{self.path_of(key)}: must not be negative, got {_describe(raw)}")
        if value > maximum:
            raise InvalidArgument(
                f"{self.path_of(key)}: out of range, got {_describe(raw)} (at most {maximum})"
            )
        return value

    def duration(self, key: str) -> Optional[datetime.timedelta]:
        value = self._get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self._wrong(key, "a duration (PT1S, 1m30s or seconds)", value)
        try:
            duration = parse_duration(value)
        except InvalidArgument as err:
            raise InvalidArgument(f"{self.path_of(key)}: {err}") from err
        if duration > MAX_DURATION:
            raise InvalidArgument(f"{self.path_of(key)}: out of range, got {_describe(value)}")
        return duration

    def array(self, key: str) -> Optional[List[Any]]:
        value = self._get(key)
        if value is not None and (isinstance(value, _Pairs) or not isinstance(value, list)):
            raise self._wrong(key, "an array", value)
        return value

    def object(self, key: str) -> Optional[_Object]:
        value = self._get(key)
        if value is None:
            return None
        return _Object(value, self.path_of(key), self._children)

    def element_object(self, value: Any, path: str) -> _Object:
        """An object found inside an array of this object, at ``path``."""
        return _Object(value, path, self._children)

    def collect_unknown(self) -> List[str]:
        """Paths of keys never read, in this object and every object read beneath it."""
        unknown = []
        for child in self._children:
            for folded, (key, _) in child._items.items():
                if folded not in child._read:
                    unknown.append(child.path_of(key))
        return unknown

"""Checks of what CM sends, at the boundary, with the wire's own ranges. Pure: no I/O, no clock.

Theory of operation
-------------------
Protobuf decoding alone lets hostile values through: an ``InstanceInfo.uid`` sent as 2^32 decodes
as 0 (root) because parsers truncate a varint to the field's width, an ``InstanceIdent.instance``
of 2^64-1 is a valid uint64 that the launcher's SQLite store (int64) cannot hold, and an empty
identity is a valid empty string. Two layers stop them before anything is stored or started:

- :func:`find_wire_problem` walks the raw bytes of a message against its descriptor: varints
  wider than their field (int32, uint32, enums), strings that are not UTF-8, truncated or
  mistyped fields. It names the field path and says why; a caller that holds raw bytes uses it
  for a CoreAlert or an error reply instead of a decode failure that says nothing.
- :func:`check_instance_info` and :func:`check_update_instances` check decoded messages: empty
  identities, indexes beyond int64, uid/gid the kernel reserves, env var names an environment
  cannot hold, storage/state paths that escape their directory, alert rules outside their
  ranges. Each refused instance becomes its own ``failed`` status with invalidArgument; the
  others of the batch go on (issue 12: one bad instance never stalls or hides the rest).
- :func:`update_instances_from_bytes` does both for an UpdateInstances whose bytes did not
  decode as a whole: each start instance is decoded on its own, so one undecodable instance
  costs that instance only.

Every message puts the field first and the cause right after it: CM keeps 64 characters of
``ErrorInfo.message`` (PROTOCOL.md).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple, Type, TypeVar, Union

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from aos_sm.proto.common.v2 import common_pb2
from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

from .errors import InvalidArgument, error_info_ok
from .incoming import WireError, read_varint, walk_spans

# The launcher's store keeps the instance index in an SQLite INTEGER, a signed 64-bit value
# (agent/launcher/store.py); 2^63..2^64-1 are valid on the wire but would overflow on insert.
MAX_INSTANCE_INDEX = (1 << 63) - 1
# (uid_t)-1 means "no change" to setresuid(2)/chown(2): never an identity to run as.
NO_ID = (1 << 32) - 1
MAX_PERCENT = 100.0
# google.protobuf.Duration's range (duration.proto): +-315,576,000,000 s, nanos within a second.
MAX_DURATION_SECONDS = 315_576_000_000
MAX_PATH_BYTES = 4096  # PATH_MAX on Linux

_INT32 = (-(1 << 31), (1 << 31) - 1)
_UINT32 = (0, (1 << 32) - 1)
_VARINT, _FIXED64, _LENGTH, _START_GROUP, _END_GROUP, _FIXED32 = 0, 1, 2, 3, 4, 5


@dataclass(frozen=True)
class CheckedUpdate:
    """An UpdateInstances split in what may reach the launcher and what was refused."""

    request: sm_pb2.UpdateInstances  # the valid start and stop entries, in their order
    rejected: Tuple[sm_pb2.InstanceStatus, ...]  # one status per refused entry, error filled


# --------------------------------------------------------------------------------------------
# Decoded messages
# --------------------------------------------------------------------------------------------


def check_instance_ident(ident: common_pb2.InstanceIdent, path: str = "instance") -> None:
    """Raise InvalidArgument naming the field when ``ident`` cannot name a stored instance."""
    if not ident.item_id:
        raise InvalidArgument(f"{path}.item_id: empty")
    if not ident.subject_id:
        raise InvalidArgument(f"{path}.subject_id: empty")
    _check_index(ident, path)
    if ident.type not in common_pb2.ItemType.values():
        raise InvalidArgument(f"{path}.type: unknown item type {ident.type}")


def _check_index(ident: common_pb2.InstanceIdent, path: str) -> None:
    if ident.instance > MAX_INSTANCE_INDEX:
        raise InvalidArgument(f"{path}.instance: {ident.instance} is above 2^63-1 (int64 store)")


def check_instance_info(info: sm_pb2.InstanceInfo) -> None:
    """Raise InvalidArgument naming the first field of ``info`` that must not reach the launcher."""
    check_instance_ident(info.instance)
    for name in ("version", "manifest_digest", "owner_id", "runtime_id"):
        _check_text(getattr(info, name), name)
    for name in ("uid", "gid"):
        if getattr(info, name) == NO_ID:
            raise InvalidArgument(f"{name}: {NO_ID} is (uid_t)-1, not an identity")
    for name in ("storage_path", "state_path"):
        _check_relative_path(getattr(info, name), name)
    seen = set()
    for index, var in enumerate(info.env_vars):
        where = f"env_vars[{index}]"
        if not var.name or "=" in var.name or "\0" in var.name:
            raise InvalidArgument(f"{where}.name: {var.name[:20]!r} is not an env var name")
        if "\0" in var.value:
            raise InvalidArgument(f"{where}.value: contains NUL")
        if var.name in seen:
            raise InvalidArgument(f"{where}.name: duplicate {var.name[:20]!r}")
        seen.add(var.name)
    if info.HasField("monitoring_parameters") and info.monitoring_parameters.HasField("alert_rules"):
        check_alert_rules(info.monitoring_parameters.alert_rules, "monitoring_parameters.alert_rules")


def check_alert_rules(rules: sm_pb2.AlertRules, path: str) -> None:
    """Percents in 0..100, points as uint64 (always), min <= max, durations within range."""
    for name in ("ram", "cpu"):
        if rules.HasField(name):
            _check_rule(getattr(rules, name), f"{path}.{name}", percent=True)
    names = set()
    for index, partition in enumerate(rules.partitions):
        where = f"{path}.partitions[{index}]"
        if not partition.name:
            raise InvalidArgument(f"{where}.name: empty")
        if partition.name in names:
            raise InvalidArgument(f"{where}.name: duplicate {partition.name[:20]!r}")
        names.add(partition.name)
        _check_rule(partition, where, percent=True)
    for name in ("download", "upload"):
        if rules.HasField(name):
            _check_rule(getattr(rules, name), f"{path}.{name}", percent=False)


_Rule = Union[sm_pb2.AlertRulePercents, sm_pb2.AlertRulePoints, sm_pb2.PartitionAlertRule]


def _check_rule(rule: _Rule, path: str, *, percent: bool) -> None:
    """A rule's duration (non-negative, within Duration's range) and thresholds (min <= max;
    percents in 0..100; points are uint64 on the wire and so always in range once decoded)."""
    if rule.HasField("duration"):
        duration = rule.duration
        if not 0 <= duration.seconds <= MAX_DURATION_SECONDS:
            raise InvalidArgument(f"{path}.duration: {duration.seconds} s is out of range")
        if not 0 <= duration.nanos <= 999_999_999:
            raise InvalidArgument(f"{path}.duration: nanos {duration.nanos} out of range")
    low, high = rule.min_threshold, rule.max_threshold
    if percent:
        _check_percent(low, f"{path}.min_threshold")
        _check_percent(high, f"{path}.max_threshold")
    if low > high:
        # Hysteresis needs min <= max (PROTOCOL.md "Alert rules"), or an alert never falls.
        raise InvalidArgument(f"{path}.min_threshold: {low:g} is above max_threshold {high:g}")


def _check_percent(value: float, path: str) -> None:
    if not math.isfinite(value) or not 0.0 <= value <= MAX_PERCENT:
        raise InvalidArgument(f"{path}: {value:g} is not a percent (0..100)")


def _check_text(value: str, path: str) -> None:
    if "\0" in value:
        raise InvalidArgument(f"{path}: contains NUL")


def _check_relative_path(value: str, path: str) -> None:
    """Empty (none), or a relative path that stays inside its directory: CM sends
    ``<item>/<subject>/<instance>`` and the SM joins it to its storage or state directory
    (INSTANCES.md "Storage and state"); an absolute path or a ``..`` would escape it, and the
    launcher creates the directory and binds it read-write into the container."""
    if not value:
        return
    if "\0" in value:
        raise InvalidArgument(f"{path}: contains NUL")
    if len(value.encode("utf-8")) > MAX_PATH_BYTES:
        raise InvalidArgument(f"{path}: longer than {MAX_PATH_BYTES} bytes")
    if value.startswith("/"):
        raise InvalidArgument(f"{path}: absolute, escapes its directory: {value[:30]!r}")
    if ".." in value.split("/"):
        raise InvalidArgument(f"{path}: '..' escapes its directory: {value[:30]!r}")


def check_update_instances(request: sm_pb2.UpdateInstances) -> CheckedUpdate:
    """Split ``request``: refused start instances get a ``failed`` status with invalidArgument;
    a stop whose index no store can hold gets ``inactive`` with the error (nothing runs under
    it). Empty identities may still be stopped: an older agent may have stored one."""
    valid = sm_pb2.UpdateInstances()
    rejected: List[sm_pb2.InstanceStatus] = []
    for info in request.start_instances:
        try:
            check_instance_info(info)
        except InvalidArgument as err:
            rejected.append(refused_start(info, err))
            continue
        valid.start_instances.append(info)
    for ident in request.stop_instances:
        try:
            _check_index(ident, "instance")
        except InvalidArgument as err:
            rejected.append(sm_pb2.InstanceStatus(instance=ident, state="inactive", error=err.to_error_info()))
            continue
        valid.stop_instances.append(ident)
    return CheckedUpdate(valid, tuple(rejected))


def refused_start(info: sm_pb2.InstanceInfo, err: InvalidArgument) -> sm_pb2.InstanceStatus:
    return sm_pb2.InstanceStatus(
        instance=info.instance, version=info.version, runtime_id=info.runtime_id,
        manifest_digest=info.manifest_digest, state="failed", error=err.to_error_info(),
        env_vars=[sm_pb2.EnvVarStatus(name=var.name, error=error_info_ok()) for var in info.env_vars],
    )


# --------------------------------------------------------------------------------------------
# Raw bytes
# --------------------------------------------------------------------------------------------


_WIRE_TYPE = {
    FieldDescriptor.TYPE_DOUBLE: _FIXED64, FieldDescriptor.TYPE_FIXED64: _FIXED64,
    FieldDescriptor.TYPE_SFIXED64: _FIXED64, FieldDescriptor.TYPE_FLOAT: _FIXED32,
    FieldDescriptor.TYPE_FIXED32: _FIXED32, FieldDescriptor.TYPE_SFIXED32: _FIXED32,
    FieldDescriptor.TYPE_STRING: _LENGTH, FieldDescriptor.TYPE_BYTES: _LENGTH,
    FieldDescriptor.TYPE_MESSAGE: _LENGTH,
}


# Descriptors are typed loosely: the upb and the pure-Python ones are different classes.
def find_wire_problem(descriptor: Any, data: bytes, path: str = "") -> Optional[str]:
    """The first field of ``data`` (a serialized ``descriptor`` message) whose bytes protobuf
    would refuse or silently truncate, as "path: cause"; None when all of it is in range.
    Unknown fields are skipped (a newer CM may send them), their framing still checked."""
    position = 0
    try:
        while position < len(data):
            key, position = read_varint(data, position)
            number, wire_type = key >> 3, key & 7
            field = descriptor.fields_by_number.get(number)
            name = f"{path}{field.name if field else f'#{number}'}"
            if wire_type == _VARINT:
                value, position = read_varint(data, position)
                problem = _varint_problem(field, value) if field is not None else None
            elif wire_type == _FIXED64 or wire_type == _FIXED32:
                position += 8 if wire_type == _FIXED64 else 4
                if position > len(data):
                    raise WireError("truncated")
                problem = None
            elif wire_type == _LENGTH:
                size, position = read_varint(data, position)
                chunk = data[position:position + size]
                if len(chunk) != size:
                    return f"{name}: truncated ({size} bytes announced, {len(chunk)} left)"
                position += size
                problem = _length_problem(field, chunk, name) if field is not None else None
            else:
                return f"{name}: wire type {wire_type} is not supported here"
            if problem is None and field is not None and not _wire_type_fits(field, wire_type):
                problem = f"wire type {wire_type} does not fit a {_type_name(field)}"
            if problem is not None:
                return problem if problem.startswith(name) else f"{name}: {problem}"
    except WireError:
        return f"{path.rstrip('.') or descriptor.name}: truncated at byte {position}"
    return None


def _type_name(field: FieldDescriptor) -> str:
    for attribute in dir(FieldDescriptor):
        if attribute.startswith("TYPE_") and getattr(FieldDescriptor, attribute) == field.type:
            return attribute[5:].lower()
    return "field"


def _wire_type_fits(field: FieldDescriptor, wire_type: int) -> bool:
    expected = _WIRE_TYPE.get(field.type, _VARINT)
    # A repeated scalar may come packed (one length-delimited run).
    packed = wire_type == _LENGTH and _is_repeated(field) and expected != _LENGTH
    return wire_type == expected or packed


def _is_repeated(field: FieldDescriptor) -> bool:
    # protobuf 6+ has ``is_repeated`` and dropped ``label``; 3.21 (bookworm) has only ``label``.
    repeated = getattr(field, "is_repeated", None)
    if repeated is not None:
        return bool(repeated)
    return bool(getattr(field, "label") == 3)  # FieldDescriptor.LABEL_REPEATED


def _varint_problem(field: FieldDescriptor, value: int) -> Optional[str]:
    if field.type in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_ENUM):
        # A negative int32 travels sign-extended to 64 bits (protobuf encoding guide).
        signed = value - (1 << 64) if value >= 1 << 63 else value
        if not _INT32[0] <= signed <= _INT32[1]:
            return f"{value} does not fit an int32"
    elif field.type == FieldDescriptor.TYPE_UINT32 and value > _UINT32[1]:
        return f"{value} does not fit a uint32"
    elif field.type == FieldDescriptor.TYPE_BOOL and value > 1:
        return f"{value} is not a bool"
    elif value >= 1 << 64:
        return f"{value} does not fit 64 bits"
    return None


def _length_problem(field: FieldDescriptor, chunk: bytes, name: str) -> Optional[str]:
    if field.type == FieldDescriptor.TYPE_STRING:
        try:
            chunk.decode("utf-8")
        except UnicodeDecodeError as err:
            return f"not UTF-8 at byte {err.start}"
        return None
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return find_wire_problem(field.message_type, chunk, f"{name}.")
    return None


def update_instances_from_bytes(payload: bytes) -> CheckedUpdate:
    """An UpdateInstances from its raw bytes, one entry at a time: an entry that does not decode
    or whose bytes are out of range is refused alone, with the best identity its bytes allow."""
    valid = sm_pb2.UpdateInstances()
    rejected: List[sm_pb2.InstanceStatus] = []
    for number, chunk in _length_fields(payload):
        if number == 1:
            problem = find_wire_problem(sm_pb2.InstanceInfo.DESCRIPTOR, chunk)
            info = _decode(sm_pb2.InstanceInfo, chunk) if problem is None else None
            if info is None:
                rejected.append(refused_start(_salvage_info(chunk), InvalidArgument(problem or "undecodable")))
            else:
                valid.start_instances.append(info)
        elif number == 2:
            problem = find_wire_problem(common_pb2.InstanceIdent.DESCRIPTOR, chunk)
            ident = _decode(common_pb2.InstanceIdent, chunk) if problem is None else None
            if ident is None:
                error = InvalidArgument(problem or "undecodable").to_error_info()
                rejected.append(sm_pb2.InstanceStatus(instance=_salvage_ident(chunk), state="inactive", error=error))
            else:
                valid.stop_instances.append(ident)
    checked = check_update_instances(valid)
    return CheckedUpdate(checked.request, tuple(rejected) + checked.rejected)


_M = TypeVar("_M", bound=Message)


def _decode(kind: Type[_M], chunk: bytes) -> Optional[_M]:
    try:
        return kind.FromString(chunk)
    except DecodeError:
        return None


def _length_fields(data: bytes) -> Sequence[Tuple[int, bytes]]:
    """The length-delimited fields of ``data`` in order, as far as its framing holds."""
    fields: List[Tuple[int, bytes]] = []
    with contextlib.suppress(WireError):
        for number, wire_type, _start, _end, payload in walk_spans(data):
            if wire_type == _LENGTH and payload is not None:
                fields.append((number, payload))
    return fields


def _salvage_ident(chunk: bytes) -> common_pb2.InstanceIdent:
    """The identity fields whose bytes are usable, so that CM can match the refusal."""
    ident = common_pb2.InstanceIdent()
    for number, value in _length_fields(chunk):
        if number in (1, 2):
            setattr(ident, "item_id" if number == 1 else "subject_id", value.decode("utf-8", "replace"))
    scalars = _decode(common_pb2.InstanceIdent, _without_length_fields(chunk))
    if scalars is not None:
        ident.instance, ident.type = scalars.instance, scalars.type
    return ident


def _salvage_info(chunk: bytes) -> sm_pb2.InstanceInfo:
    info = sm_pb2.InstanceInfo()
    for number, value in _length_fields(chunk):
        if number == 1:
            info.instance.CopyFrom(_salvage_ident(value))
    return info


def _without_length_fields(data: bytes) -> bytes:
    """``data`` less its length-delimited fields: the scalars, which decode on their own."""
    out = bytearray()
    with contextlib.suppress(WireError):
        for _number, wire_type, start, end, _payload in walk_spans(data):
            if wire_type in (_VARINT, _FIXED64, _FIXED32):
                out += data[start:end]
    return bytes(out)


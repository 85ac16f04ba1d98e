"""Parse CM's raw frames ourselves, so that one bad message costs that message, not the stream.

gRPC's deserializer fails the whole call on a frame that does not decode; the reference SM then
loses the stream and every command in flight. Here each frame is parsed by the dispatcher:
- ``parse_frame`` returns the decoded ``SMIncomingMessages``, or an ``Undecodable`` that says
  which oneof field arrived (found by walking the wire's tags and lengths, which needs no
  schema) and why its payload does not decode, as a field path ("start_instances[0].
  network_parameters.network_id: not valid UTF-8"), so the reply and the CoreAlert can say it.
- ``walk_fields`` and ``string_field`` read single fields out of a payload that does not decode
  as a whole: enough to answer a request whose correlation id or version is still readable.

The protobuf wire format: each field is a varint tag ``number << 3 | wire type`` then a varint
(0), 8 bytes (1), a varint length and that many bytes (2), a group up to its end tag (3/4),
or 4 bytes (5). https://protobuf.dev/programming-guides/encoding/
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, List, Optional, Tuple, Union

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError

from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

ONEOF = "SMIncomingMessage"
_MAX_GROUP_DEPTH = 32  # deeper nesting is refused, like protobuf's own recursion limit
# The walk is Python, protobuf's parser is not: a 64 MiB frame of one-byte fields would hold the
# gateway for a minute. Past these bounds the walk gives up and the reply says less.
MAX_FIELDS = 100_000
MAX_EXPLAINED_BYTES = 1 << 20


# What a protobuf parser raises on bad bytes: DecodeError; the pure-Python parser of protobuf
# 3.x raises UnicodeDecodeError (a ValueError) on a bad string; RuntimeError on deep recursion.
PARSE_ERRORS = (DecodeError, ValueError, RuntimeError)


class WireError(ValueError):
    """The bytes are not protobuf wire format (truncated, bad tag, bad wire type)."""


@dataclass(frozen=True)
class Undecodable:
    """A frame, or the payload of one oneof field of it, that does not decode.

    ``kind`` is the oneof field name when the frame's outer layer says which request it is
    (None for plain garbage); ``payload`` is that field's raw bytes; ``why`` is cause first."""

    kind: Optional[str]
    payload: bytes
    why: str


Parsed = Union[sm_pb2.SMIncomingMessages, Undecodable]


def read_varint(data: bytes, pos: int) -> Tuple[int, int]:
    """The varint at ``pos`` and the position after it; WireError when truncated or over 10 bytes."""
    result = shift = 0
    while True:
        if pos >= len(data):
            raise WireError(f"truncated varint at byte {pos}")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 64:
            raise WireError(f"varint longer than 10 bytes at byte {pos}")


def _skip(data: bytes, pos: int, number: int, wire_type: int, depth: int) -> Tuple[int, Optional[bytes]]:
    """Past one field's value; returns the new position and the payload of a length-delimited one."""
    if wire_type == 0:
        return read_varint(data, pos)[1], None
    if wire_type in (1, 5):
        end = pos + (8 if wire_type == 1 else 4)
        if end > len(data):
            raise WireError(f"field {number}: truncated fixed-size value at byte {pos}")
        return end, None
    if wire_type == 2:
        length, pos = read_varint(data, pos)
        if pos + length > len(data):
            raise WireError(f"field {number}: length {length} runs past the end at byte {pos}")
        return pos + length, data[pos:pos + length]
    if wire_type == 3:
        if depth >= _MAX_GROUP_DEPTH:
            raise WireError(f"field {number}: groups nested too deep")
        while True:
            inner, wire, pos = _tag(data, pos)
            if wire == 4:
                if inner != number:
                    raise WireError(f"group {number} closed by end tag {inner}")
                return pos, None
            pos, _ = _skip(data, pos, inner, wire, depth + 1)
    raise WireError(f"field {number}: invalid wire type {wire_type}")


def _tag(data: bytes, pos: int) -> Tuple[int, int, int]:
    tag, pos = read_varint(data, pos)
    number, wire_type = tag >> 3, tag & 7
    if number == 0:
        raise WireError(f"field number 0 at byte {pos - 1}")
    return number, wire_type, pos


def walk_spans(data: bytes) -> Iterator[Tuple[int, int, int, int, Optional[bytes]]]:
    """``(number, wire type, start, end, payload of a length-delimited field)`` for each field,
    ``data[start:end]`` being the whole field (tag included); raises ``WireError`` where the
    bytes stop being wire format."""
    pos = fields = 0
    while pos < len(data):
        fields += 1
        if fields > MAX_FIELDS:
            raise WireError(f"more than {MAX_FIELDS} fields")
        start = pos
        number, wire_type, pos = _tag(data, pos)
        if wire_type == 4:
            raise WireError(f"end of group {number} with no group open")
        pos, payload = _skip(data, pos, number, wire_type, 0)
        yield number, wire_type, start, pos, payload


def walk_fields(data: bytes) -> Iterator[Tuple[int, int, Optional[bytes]]]:
    """``(number, wire type, payload of a length-delimited field)`` for each field; raises
    ``WireError`` where the bytes stop being wire format."""
    for number, wire_type, _start, _end, payload in walk_spans(data):
        yield number, wire_type, payload


def string_field(data: bytes, number: int) -> str:
    """The last readable UTF-8 value of length-delimited field ``number`` ("" if none)."""
    value = ""
    try:
        for field, wire_type, payload in walk_fields(data):
            if field == number and wire_type == 2 and payload is not None:
                try:
                    value = payload.decode("utf-8")
                except UnicodeDecodeError:
                    continue
    except WireError:
        pass
    return value


def _repeated(field: Any) -> bool:
    # protobuf >= 5 has ``is_repeated`` and deprecates ``label``; bookworm's 3.21 has only ``label``.
    repeated = getattr(field, "is_repeated", None)
    if repeated is not None:
        return bool(repeated)
    return bool(field.label == FieldDescriptor.LABEL_REPEATED)


def explain(descriptor: Any, data: bytes, path: str = "") -> str:
    """Why ``data`` does not decode as ``descriptor``: the first problem, as ``path: problem``;
    "" when the walk finds none (the caller then reports protobuf's own words)."""
    if len(data) > MAX_EXPLAINED_BYTES:
        return ""
    counts: dict[int, int] = {}
    try:
        for number, wire_type, payload in walk_fields(data):
            field: Any = descriptor.fields_by_number.get(number)
            if field is None or wire_type != 2 or payload is None:
                continue
            name = field.name
            if _repeated(field):
                index = counts.get(number, 0)
                counts[number] = index + 1
                name = f"{name}[{index}]"
            where = f"{path}.{name}" if path else name
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                problem = explain(field.message_type, payload, where)
                if problem:
                    return problem
            elif field.type == FieldDescriptor.TYPE_STRING:
                try:
                    payload.decode("utf-8")
                except UnicodeDecodeError as err:
                    return f"{where}: not valid UTF-8 (byte {err.start})"
    except WireError as err:
        return f"{path or descriptor.name}: {err}"
    return ""


def _oneof_kind(number: int) -> Optional[str]:
    field = sm_pb2.SMIncomingMessages.DESCRIPTOR.fields_by_number.get(number)
    if field is None or field.containing_oneof is None or field.containing_oneof.name != ONEOF:
        return None
    return str(field.name)


def parse_frame(frame: bytes) -> Parsed:
    """The frame as ``SMIncomingMessages``, or why not and which request it was meant to be."""
    try:
        return sm_pb2.SMIncomingMessages.FromString(frame)
    except PARSE_ERRORS as err:
        decode_error = str(err) or type(err).__name__
    kind: Optional[str] = None
    payload = b""
    try:
        fields: List[Tuple[int, int, Optional[bytes]]] = list(walk_fields(frame))
    except WireError as err:
        return Undecodable(None, frame, f"not a protobuf message: {err}")
    for number, wire_type, field_payload in fields:
        field_kind = _oneof_kind(number)
        if field_kind is not None and wire_type == 2 and field_payload is not None:
            kind, payload = field_kind, field_payload  # the last oneof field wins, as in protobuf
    if kind is None:
        return Undecodable(None, frame, f"not a CM request: {decode_error}")
    inner: Any = sm_pb2.SMIncomingMessages.DESCRIPTOR.fields_by_name[kind].message_type
    why = explain(inner, payload) or explain(sm_pb2.SMIncomingMessages.DESCRIPTOR, frame)
    return Undecodable(kind, payload, why or decode_error)


def type_name(kind: Optional[str]) -> str:
    """``update_instances`` -> ``UpdateInstances``; None -> ``frame``."""
    if kind is None:
        return "frame"
    inner: Any = sm_pb2.SMIncomingMessages.DESCRIPTOR.fields_by_name[kind].message_type
    return str(inner.name)

"""The wire contract (tests/data/servicemanager-v5.tsv) as message classes, built without our code.

Why: the SM must interoperate with a CM that someone else compiled from the same contract. If the
tests drove the agent with our own ``aos_sm.proto`` classes, a wrong field number in ``proto/``
would be wrong on both ends and every test would still pass. So this module reads the TSV,
builds ``FileDescriptorProto``s from its facts, and loads them into a *private*
``DescriptorPool``; ``contract_cm.py`` serves a CM with those classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from google.protobuf import descriptor_pb2, descriptor_pool, duration_pb2, json_format
from google.protobuf import message_factory, timestamp_pb2
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

CONTRACT_PATH = Path(__file__).parent / "data" / "servicemanager-v5.tsv"
_PACKAGE = "servicemanager.v5"

_FDP = descriptor_pb2.FieldDescriptorProto
_SCALAR_TYPES: dict[str, int] = {
    "double": _FDP.TYPE_DOUBLE,
    "float": _FDP.TYPE_FLOAT,
    "int64": _FDP.TYPE_INT64,
    "uint64": _FDP.TYPE_UINT64,
    "int32": _FDP.TYPE_INT32,
    "fixed64": _FDP.TYPE_FIXED64,
    "fixed32": _FDP.TYPE_FIXED32,
    "bool": _FDP.TYPE_BOOL,
    "string": _FDP.TYPE_STRING,
    "bytes": _FDP.TYPE_BYTES,
    "uint32": _FDP.TYPE_UINT32,
    "sfixed32": _FDP.TYPE_SFIXED32,
    "sfixed64": _FDP.TYPE_SFIXED64,
    "sint32": _FDP.TYPE_SINT32,
    "sint64": _FDP.TYPE_SINT64,
}
# Imports the contract may name that are not contract files themselves.
_WELL_KNOWN_FILES = {
    "google/protobuf/timestamp.proto": timestamp_pb2.DESCRIPTOR,
    "google/protobuf/duration.proto": duration_pb2.DESCRIPTOR,
}


class ContractCMError(Exception):
    """Base of everything this module raises on purpose."""


class ContractFileError(ContractCMError, ValueError):
    """The contract TSV says something this builder cannot turn into descriptors."""


def _json_name(name: str) -> str:
    """protoc's ToJsonName: drop underscores, capitalise the letter after each one."""
    out: list[str] = []
    upper_next = False
    for char in name:
        if char == "_":
            upper_next = True
            continue
        out.append(char.upper() if upper_next else char)
        upper_next = False
    return "".join(out)


@dataclass
class _FieldFact:
    file: descriptor_pb2.FileDescriptorProto
    message: str
    number: int
    name: str
    type_name: str
    repeated: bool
    oneof: Optional[str]


@dataclass
class _Builder:
    files: list[descriptor_pb2.FileDescriptorProto] = field(default_factory=list)
    messages: dict[str, descriptor_pb2.DescriptorProto] = field(default_factory=dict)
    enums: dict[str, descriptor_pb2.EnumDescriptorProto] = field(default_factory=dict)
    fields: list[_FieldFact] = field(default_factory=list)

    def current_file(self, line_number: int) -> descriptor_pb2.FileDescriptorProto:
        if not self.files:
            raise ContractFileError(f"line {line_number}: a fact before any 'file' line")
        return self.files[-1]

    def container(
        self, file: descriptor_pb2.FileDescriptorProto, full_name: str, line_number: int
    ) -> tuple[Any, str]:
        """The file or message that declares ``full_name``, and its short name."""
        prefix = f"{file.package}."
        if not full_name.startswith(prefix):
            raise ContractFileError(f"line {line_number}: {full_name} is not in {file.package}")
        parent_name, _, short = full_name.rpartition(".")
        if parent_name == file.package:
            return file, short
        if parent_name not in self.messages:
            raise ContractFileError(f"line {line_number}: {parent_name} declared after its child")
        return self.messages[parent_name], short


def _parse_file(builder: _Builder, cols: Sequence[str], line_number: int) -> None:
    options = dict(col.split("=", 1) for col in cols[2:])
    file = descriptor_pb2.FileDescriptorProto(
        name=cols[1], package=options["package"], syntax="proto3"
    )
    file.dependency.extend(name for name in options.get("imports", "").split(",") if name)
    builder.files.append(file)


def _parse_enum(builder: _Builder, cols: Sequence[str], line_number: int) -> None:
    full_name, value_name, number = cols[1], cols[2], int(cols[3])
    if full_name not in builder.enums:
        file = builder.current_file(line_number)
        container, short = builder.container(file, full_name, line_number)
        enum = container.enum_type.add(name=short)
        builder.enums[full_name] = enum
    builder.enums[full_name].value.add(name=value_name, number=number)


def _parse_message(builder: _Builder, cols: Sequence[str], line_number: int) -> None:
    full_name = cols[1]
    file = builder.current_file(line_number)
    container, short = builder.container(file, full_name, line_number)
    holder = container.message_type if container is file else container.nested_type
    builder.messages[full_name] = holder.add(name=short)


def _parse_field(builder: _Builder, cols: Sequence[str], line_number: int) -> None:
    message, number, name, type_name, label, oneof = cols[1:7]
    if label not in ("singular", "repeated") or not oneof.startswith("oneof="):
        raise ContractFileError(f"line {line_number}: unreadable field fact {cols!r}")
    oneof_name = oneof[len("oneof=") :]
    builder.fields.append(
        _FieldFact(
            file=builder.current_file(line_number),
            message=message,
            number=int(number),
            name=name,
            type_name=type_name,
            repeated=label == "repeated",
            oneof=None if oneof_name == "-" else oneof_name,
        )
    )


def _parse_rpc(builder: _Builder, cols: Sequence[str], line_number: int) -> None:
    file = builder.current_file(line_number)
    service_full, _, method_name = cols[1].partition("/")
    request, arrow, response = cols[2].partition(" -> ")
    if not arrow or not method_name:
        raise ContractFileError(f"line {line_number}: unreadable rpc fact {cols!r}")
    _, service_short = builder.container(file, service_full, line_number)
    service = next((s for s in file.service if s.name == service_short), None)
    if service is None:
        service = file.service.add(name=service_short)
    client_streaming = request.startswith("stream ")
    server_streaming = response.startswith("stream ")
    service.method.add(
        name=method_name,
        input_type="." + request.split()[-1],
        output_type="." + response.split()[-1],
        client_streaming=client_streaming,
        server_streaming=server_streaming,
    )


_PARSERS: dict[str, Callable[[_Builder, Sequence[str], int], None]] = {
    "file": _parse_file,
    "enum": _parse_enum,
    "message": _parse_message,
    "field": _parse_field,
    "rpc": _parse_rpc,
}


def _well_known_types() -> set[str]:
    return {
        message.full_name
        for file in _WELL_KNOWN_FILES.values()
        for message in file.message_types_by_name.values()
    }


def _add_field(builder: _Builder, fact: _FieldFact, message_types: set[str]) -> None:
    message = builder.messages.get(fact.message)
    if message is None:
        raise ContractFileError(f"field {fact.name} of undeclared message {fact.message}")
    proto = message.field.add(
        name=fact.name,
        number=fact.number,
        json_name=_json_name(fact.name),
        label=_FDP.LABEL_REPEATED if fact.repeated else _FDP.LABEL_OPTIONAL,
    )
    if fact.type_name in _SCALAR_TYPES:
        proto.type = _SCALAR_TYPES[fact.type_name]  # type: ignore[assignment]
    elif fact.type_name in builder.enums:
        proto.type = _FDP.TYPE_ENUM
        proto.type_name = "." + fact.type_name
    elif fact.type_name in message_types:
        proto.type = _FDP.TYPE_MESSAGE
        proto.type_name = "." + fact.type_name
    else:
        raise ContractFileError(f"{fact.message}.{fact.name}: unknown type {fact.type_name}")
    if fact.oneof is not None:
        names = [decl.name for decl in message.oneof_decl]
        if fact.oneof not in names:
            message.oneof_decl.add(name=fact.oneof)
            names.append(fact.oneof)
        proto.oneof_index = names.index(fact.oneof)


def build_file_protos(text: str) -> list[descriptor_pb2.FileDescriptorProto]:
    """The contract's facts as FileDescriptorProtos, in the order the contract lists files."""
    builder = _Builder()
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        cols = line.split("\t")
        parser = _PARSERS.get(cols[0])
        if parser is None:
            raise ContractFileError(f"line {line_number}: unknown fact kind {cols[0]!r}")
        try:
            parser(builder, cols, line_number)
        except (IndexError, KeyError, ValueError) as err:
            if isinstance(err, ContractFileError):
                raise
            raise ContractFileError(f"line {line_number}: {line!r}: {err}") from err
    # Fields last: a field may name a type declared further down the contract.
    message_types = set(builder.messages) | _well_known_types()
    for fact in builder.fields:
        _add_field(builder, fact, message_types)
    return builder.files


def _message_class(descriptor: Descriptor) -> type[Message]:
    # GetMessageClass exists from protobuf 4.21 on, and MessageFactory.GetPrototype is gone in 5.x.
    get_message_class = getattr(message_factory, "GetMessageClass", None)
    if get_message_class is not None:
        return get_message_class(descriptor)  # type: ignore[no-any-return]
    factory: Any = message_factory.MessageFactory(descriptor.file.pool)
    return factory.GetPrototype(descriptor)  # type: ignore[no-any-return]


class Contract:
    """The wire contract as message classes from a private descriptor pool."""

    def __init__(self, path: Path = CONTRACT_PATH) -> None:
        self.path = path
        self.file_protos = build_file_protos(path.read_text())
        self.pool = descriptor_pool.DescriptorPool()
        self._load_files()
        self._classes: dict[str, type[Message]] = {}
        self.incoming = self.message_class(f"{_PACKAGE}.SMIncomingMessages")
        self.outgoing = self.message_class(f"{_PACKAGE}.SMOutgoingMessages")
        self.blobs_request = self.message_class(f"{_PACKAGE}.BlobsInfosRequest")
        self.blobs_infos = self.message_class(f"{_PACKAGE}.BlobsInfos")

    def _load_files(self) -> None:
        loaded: set[str] = set()
        for file in self.file_protos:
            for dependency in file.dependency:
                if dependency in loaded:
                    continue
                well_known = _WELL_KNOWN_FILES.get(dependency)
                if well_known is None:
                    raise ContractFileError(f"{file.name} imports unknown {dependency}")
                self.pool.AddSerializedFile(well_known.serialized_pb)
                loaded.add(dependency)
            self.pool.AddSerializedFile(file.SerializeToString())
            loaded.add(file.name)

    def message_class(self, full_name: str) -> type[Message]:
        if full_name not in self._classes:
            descriptor = self.pool.FindMessageTypeByName(full_name)
            self._classes[full_name] = _message_class(descriptor)
        return self._classes[full_name]

    @property
    def incoming_kinds(self) -> tuple[str, ...]:
        """CM -> SM kinds: the SMIncomingMessage oneof's field names, in field-number order."""
        return _oneof_names(self.incoming.DESCRIPTOR, "SMIncomingMessage")

    @property
    def outgoing_kinds(self) -> tuple[str, ...]:
        """SM -> CM kinds: the SMOutgoingMessage oneof's field names, in field-number order."""
        return _oneof_names(self.outgoing.DESCRIPTOR, "SMOutgoingMessage")

    def command(
        self, kind: str, payload: Union[Mapping[str, Any], Message, None] = None
    ) -> Message:
        """An SMIncomingMessages with ``kind`` set from a JSON-style dict or a message."""
        if kind not in self.incoming_kinds:
            raise ValueError(
                f"{kind!r} is not a CM->SM kind; the contract has {self.incoming_kinds}"
            )
        envelope = self.incoming()
        inner = getattr(envelope, kind)
        inner.SetInParent()  # an empty payload (GetNodeConfigStatus) must still select the kind
        _fill(inner, payload)
        return envelope

    def encode(self, kind: str, payload: Union[Mapping[str, Any], Message, None] = None) -> bytes:
        return bytes(self.command(kind, payload).SerializeToString())

    def outgoing_message(
        self, kind: str, payload: Union[Mapping[str, Any], Message, None] = None
    ) -> Message:
        """An SMOutgoingMessages with ``kind`` set: what an SM would send (for self-tests)."""
        if kind not in self.outgoing_kinds:
            raise ValueError(
                f"{kind!r} is not an SM->CM kind; the contract has {self.outgoing_kinds}"
            )
        envelope = self.outgoing()
        inner = getattr(envelope, kind)
        inner.SetInParent()
        _fill(inner, payload)
        return envelope


def _oneof_names(descriptor: Any, oneof: str) -> tuple[str, ...]:
    fields = sorted(descriptor.oneofs_by_name[oneof].fields, key=lambda f: f.number)
    return tuple(f.name for f in fields)


def _fill(inner: Message, payload: Union[Mapping[str, Any], Message, None]) -> None:
    if payload is None:
        return
    if isinstance(payload, Message):
        if payload.DESCRIPTOR.full_name != inner.DESCRIPTOR.full_name:
            raise TypeError(
                f"expected {inner.DESCRIPTOR.full_name}, got {payload.DESCRIPTOR.full_name}"
            )
        # Through bytes: the payload may come from another pool (e.g. our generated classes).
        inner.MergeFromString(payload.SerializeToString())
        return
    json_format.ParseDict(dict(payload), inner)


def kind_of(envelope: Message) -> Optional[str]:
    """The oneof field set in an SMIncomingMessages / SMOutgoingMessages, or None."""
    oneofs = envelope.DESCRIPTOR.oneofs
    return envelope.WhichOneof(oneofs[0].name) if oneofs else None


def message_to_dict(message: Message, *, with_defaults: bool = False) -> dict[str, Any]:
    """Readable form for assertions: proto field names; defaults only when asked."""
    if not with_defaults:
        return json_format.MessageToDict(message, preserving_proto_field_name=True)
    try:
        return json_format.MessageToDict(
            message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
    except TypeError:  # protobuf < 5.26 names the same switch differently
        old_to_dict: Any = json_format.MessageToDict
        return old_to_dict(  # type: ignore[no-any-return]
            message, preserving_proto_field_name=True, including_default_value_fields=True
        )


def length_delimited_field(number: int, data: bytes) -> bytes:
    """One raw length-delimited field: prepend to a valid frame to add a field we don't know."""
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def example_commands() -> dict[str, dict[str, Any]]:
    """A realistic JSON payload for every CM->SM kind (protobuf JSON names)."""
    instance = {"itemId": "service1", "subjectId": "subject1", "instance": "0"}
    window = {"from": "2026-01-01T00:00:00Z", "till": "2026-01-02T00:00:00Z"}
    node_config = '{"version": "1.0.0", "nodeGroupSubject": {"codename": "main"}}'
    return {
        "get_node_config_status": {},
        "check_node_config": {"nodeConfig": node_config, "version": "1.0.0"},
        "set_node_config": {"nodeConfig": node_config, "version": "1.0.0"},
        "update_instances": {
            "startInstances": [
                {"instance": instance, "version": "1.0.0", "runtimeId": "runc", "uid": 5000}
            ],
            "stopInstances": [{"itemId": "service2", "subjectId": "subject1", "instance": "1"}],
        },
        "system_log_request": {"correlationId": "log-1", **window},
        "instance_log_request": {
            "correlationId": "log-2",
            "filter": {"itemId": "service1", "instance": "-1"},
            **window,
        },
        "instance_crash_log_request": {"correlationId": "log-3", "filter": {"itemId": "service1"}},
        "get_average_monitoring": {},
        "connection_status": {"cloudStatus": "CONNECTED"},
        "update_networks": {
            "networks": [{"networkId": "net1", "subnet": "172.17.0.0/16", "ip": "172.17.0.1"}]
        },
    }

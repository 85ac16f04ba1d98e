"""The compiled descriptors say exactly what the wire contracts say, fact by fact.

Each contract under tests/data is a copy of one in ../shared/wire: servicemanager-v5.tsv is what a
real AosEdge CM speaks (with common.v2), iamanager-v6.tsv what the node's IAM speaks. A mismatch
here means our proto/ drifted from a contract: fix the .proto, never the contract.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import descriptor as _descriptor
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FieldDescriptor

import pytest

from aos_sm.proto.common.v2 import common_pb2
from aos_sm.proto.iamanager.v6 import iamanager_pb2
from aos_sm.proto.servicemanager.v5 import servicemanager_pb2

DATA = Path(__file__).parent / "data"
SHARED_WIRE = Path(__file__).resolve().parents[2] / "shared" / "wire"
CONTRACT = DATA / "servicemanager-v5.tsv"
# Each contract and the compiled files it describes (iamanager's TSV leaves common.v2 to the
# servicemanager one, which it imports).
CONTRACTS = {
    "servicemanager-v5.tsv": (common_pb2.DESCRIPTOR, servicemanager_pb2.DESCRIPTOR),
    "iamanager-v6.tsv": (iamanager_pb2.DESCRIPTOR,),
}

_SCALARS = {
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_UINT64: "uint64",
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_DOUBLE: "double",
    FieldDescriptor.TYPE_FLOAT: "float",
}


def contract_facts(path: Path) -> list[str]:
    return [
        line.rstrip("\n")
        for line in path.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


def _field_type(field: FieldDescriptor) -> str:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return str(field.message_type.full_name)
    if field.type == FieldDescriptor.TYPE_ENUM:
        return str(field.enum_type.full_name)
    return _SCALARS[field.type]


def _is_repeated(field: FieldDescriptor) -> bool:
    # protobuf 7 removed `label` in favour of `is_repeated`, which 3.20 does not have.
    if hasattr(field, "is_repeated"):
        return bool(field.is_repeated)
    return bool(field.label == FieldDescriptor.LABEL_REPEATED)


def _message_facts(message: _descriptor.Descriptor) -> list[str]:
    facts = [f"message\t{message.full_name}"]
    for field in message.fields:
        repeated = _is_repeated(field)
        oneof = field.containing_oneof.name if field.containing_oneof is not None else "-"
        facts.append(
            f"field\t{message.full_name}\t{field.number}\t{field.name}\t{_field_type(field)}\t"
            f"{'repeated' if repeated else 'singular'}\toneof={oneof}"
        )
    for nested in message.nested_types:
        facts.extend(_message_facts(nested))
    return facts


def descriptor_facts(file: _descriptor.FileDescriptor) -> list[str]:
    imports = ",".join(dep.name for dep in file.dependencies)
    facts = [f"file\t{file.name}\tpackage={file.package}\timports={imports}"]
    # Streaming flags are read from the FileDescriptorProto: MethodDescriptor only grew
    # client_streaming/server_streaming attributes in protobuf 5.
    proto = descriptor_pb2.FileDescriptorProto.FromString(file.serialized_pb)
    for service in proto.service:
        for method in service.method:
            client = "stream " if method.client_streaming else ""
            server = "stream " if method.server_streaming else ""
            facts.append(
                f"rpc\t{proto.package}.{service.name}/{method.name}\t{client}{method.input_type[1:]}"
                f" -> {server}{method.output_type[1:]}"
            )
    for enum in file.enum_types_by_name.values():
        facts.extend(f"enum\t{enum.full_name}\t{v.name}\t{v.number}" for v in enum.values)
    for message in file.message_types_by_name.values():
        facts.extend(_message_facts(message))
    return facts


def compiled_facts(contract: str = CONTRACT.name) -> list[str]:
    return [fact for file in CONTRACTS[contract] for fact in descriptor_facts(file)]


@pytest.mark.parametrize("contract", sorted(CONTRACTS))
def test_compiled_descriptors_match_the_contract_fact_by_fact(contract: str) -> None:
    expected = contract_facts(DATA / contract)
    actual = compiled_facts(contract)
    missing = [fact for fact in expected if fact not in actual]
    extra = [fact for fact in actual if fact not in expected]
    assert not missing and not extra, (
        f"proto/ differs from the wire contract {contract}\nmissing:\n  "
        + "\n  ".join(missing)
        + "\nnot in the contract:\n  "
        + "\n  ".join(extra)
    )
    assert len(actual) == len(expected)


@pytest.mark.parametrize("contract", sorted(CONTRACTS))
def test_the_contract_copy_equals_the_shared_one_when_it_is_beside_us(contract: str) -> None:
    shared = SHARED_WIRE / contract
    if not shared.exists():
        pytest.skip(f"no shared contract at {shared} (checkout without shared/)")
    assert (DATA / contract).read_text() == shared.read_text()


def test_a_renumbered_field_would_be_caught() -> None:
    """The comparison itself can fail: a contract with one number changed does not match."""
    expected = contract_facts(CONTRACT)
    tampered = [
        fact.replace("\t1\tnode_id\t", "\t9\tnode_id\t") if "SMInfo\t1\tnode_id" in fact else fact
        for fact in expected
    ]
    assert tampered != expected
    assert set(tampered) != set(compiled_facts())


def test_a_map_turned_into_a_plain_repeated_field_would_be_caught() -> None:
    """iamanager's maps are nested ...Entry messages in the facts: dropping one is a mismatch."""
    contract = "iamanager-v6.tsv"
    expected = contract_facts(DATA / contract)
    entry = "message\tiamanager.v6.RegisterInstanceRequest.PermissionsEntry"
    assert entry in expected and entry in compiled_facts(contract)
    assert set(expected) - {entry} != set(compiled_facts(contract))

"""iamanager v6 method paths and message classes, read from the generated service descriptors.

As for servicemanager (agent/rpc.py), no generated stubs: the client and the fake IAM bind each
RPC by its path, and the paths and types come from ``iamanager_pb2.DESCRIPTOR`` so they cannot
drift from the compiled contract (tests/test_wire_contract.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Tuple

from google.protobuf import empty_pb2

from aos_sm.proto.iamanager.v6 import iamanager_pb2 as iam_pb2

PACKAGE = "iamanager.v6"
PUBLIC_NODE = "IAMPublicCurrentNodeService"
PUBLIC_CERT = "IAMPublicCertService"
PERMISSIONS = "IAMPermissionsService"


@dataclass(frozen=True)
class Method:
    service: str  # full name, e.g. iamanager.v6.IAMPublicCertService
    name: str
    request: Any  # message class
    response: Any
    server_streaming: bool

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.name}"


def _message_class(full_name: str) -> Any:
    if full_name == "google.protobuf.Empty":
        return empty_pb2.Empty
    package, _, name = full_name.rpartition(".")
    if package != PACKAGE:
        raise LookupError(f"no generated class for {full_name}")
    return getattr(iam_pb2, name)


def _methods() -> Dict[Tuple[str, str], Method]:
    methods: Dict[Tuple[str, str], Method] = {}
    # Streaming flags come from the FileDescriptorProto: MethodDescriptor has them only from
    # protobuf 5 on, and we load on 3.20.
    from google.protobuf import descriptor_pb2

    proto = descriptor_pb2.FileDescriptorProto.FromString(iam_pb2.DESCRIPTOR.serialized_pb)
    for service in proto.service:
        for method in service.method:
            methods[(service.name, method.name)] = Method(
                f"{PACKAGE}.{service.name}", method.name, _message_class(method.input_type.lstrip(".")),
                _message_class(method.output_type.lstrip(".")), method.server_streaming)
    return methods


METHODS = _methods()


def method(service: str, name: str) -> Method:
    return METHODS[(service, name)]


def service_methods(service: str) -> Dict[str, Method]:
    return {name: m for (svc, name), m in METHODS.items() if svc == service}

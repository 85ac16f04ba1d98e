"""What the agent needs from IAM, as records and one Protocol; the gRPC adapter is agent/iam/client.py
and tests use the fake IAM of agent/iam/sim.py over real TLS.

The records carry only what the SM uses (IAM.md "What the SM asks"), so the rest of the agent never
imports iamanager's generated classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol, Tuple

from aos_sm.proto.common.v2 import common_pb2

from ..errors import Failed


class IamUnavailable(Failed):
    """IAM could not be reached or did not answer; ``code`` is the gRPC status code name."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code


@dataclass(frozen=True)
class IamNodeInfo:
    """``NodeInfo`` of this node as IAM states it; 0 / "" where IAM leaves a field unset."""

    node_id: str
    node_type: str = ""
    max_dmips: int = 0
    total_ram: int = 0
    os_name: str = ""
    os_version: str = ""
    architecture: str = ""  # GOARCH, from the first CPU's arch_info
    architecture_variant: str = ""
    attrs: Tuple[Tuple[str, str], ...] = ()


@dataclass(frozen=True)
class IamCertInfo:
    """``CertInfo``: where the certificate and its key are (``file://`` or ``pkcs11:`` URLs)."""

    cert_type: str
    cert_url: str
    key_url: str
    serial: bytes = b""
    issuer: bytes = b""


# function server -> {function: access}, as RegisterInstance sends it.
Permissions = Mapping[str, Mapping[str, str]]


@dataclass
class Subscription:
    """A running change stream; ``cancel`` ends it (the stream reopens by itself otherwise)."""

    cancel: Callable[[], None] = field(default=lambda: None)


class IamClient(Protocol):
    def get_node_info(self, timeout: float) -> IamNodeInfo:
        """``GetCurrentNodeInfo``; raises ``IamUnavailable``."""

    def subscribe_node_changed(self, on_change: Callable[[IamNodeInfo], None]) -> Subscription:
        """``SubscribeCurrentNodeChanged``, reopened with backoff while IAM is away."""

    def get_cert(self, cert_type: str, timeout: float) -> IamCertInfo:
        """``GetCert{type}``; raises ``IamUnavailable``."""

    def subscribe_cert_changed(self, cert_type: str, on_change: Callable[[IamCertInfo], None]) -> Subscription:
        """``SubscribeCertChanged{type}``: ``on_change`` for every renewal."""

    def register_instance(self, instance: common_pb2.InstanceIdent, permissions: Permissions,
                          timeout: float) -> str:
        """``RegisterInstance`` on the protected server: the instance's secret."""

    def unregister_instance(self, instance: common_pb2.InstanceIdent, timeout: float) -> None:
        """``UnregisterInstance`` on the protected server."""

    def close(self) -> None: ...

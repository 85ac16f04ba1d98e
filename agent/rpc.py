"""The RPC paths of ``servicemanager.v5.SMService``, and channel setup (agent/transport.py uses them).

No generated gRPC stubs: binding by path needs only the message classes, so the agent runs on
grpcio 1.51 (Debian bookworm) without grpcio-tools' version checks in generated stubs.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import grpc

from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

from .certs import check_before_connect
from .config import AgentConfig
from .errors import ConfigError, RuntimeFailure

SERVICE = "servicemanager.v5.SMService"
REGISTER_SM = f"/{SERVICE}/RegisterSM"
GET_BLOBS_INFOS = f"/{SERVICE}/GetBlobsInfos"

# The reference CM expects a ping every 10 s answered within 3 s, also with no call active
# (PROTOCOL.md "Session"). Reconnect backoff inside one channel stays short: the agent makes a
# fresh channel per attempt and runs its own jittered backoff between attempts.
CHANNEL_OPTIONS: List[Tuple[str, int]] = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 3_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 1_000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


def _read(path: Path, key: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise RuntimeFailure.from_os_error(err, f"cannot read {key}") from err


def make_credentials(config: AgentConfig) -> Optional[grpc.ChannelCredentials]:
    """Fresh credentials from the files on disk (read on every connect, so renewals apply).

    ``None`` means plaintext. ``tls`` verifies CM but presents no client certificate (the
    reference calls this mode "insecure"); ``mtls`` presents ``certFile``/``keyFile`` too.
    """
    if config.tls_mode == "plaintext":
        return None
    # Say which file is wrong and why (rate-limited) before a handshake fails saying little.
    check_before_connect(config)
    root = _read(config.ca_cert, "caCert") if config.ca_cert else None
    if config.tls_mode == "tls":
        return grpc.ssl_channel_credentials(root_certificates=root)
    if config.cert_file is None or config.key_file is None:
        raise ConfigError("certFile", "mtls needs certFile and keyFile")
    return grpc.ssl_channel_credentials(
        root_certificates=root,
        private_key=_read(config.key_file, "keyFile"),
        certificate_chain=_read(config.cert_file, "certFile"),
    )


def reconnect_options(first_wait: float, cap: float) -> List[Tuple[str, int]]:
    """gRPC's own reconnect backoff inside a channel, matched to the agent's (statemachine/
    backoff.py): while a connect attempt waits for CM, the channel retries no slower than the
    agent's cap, so a returning CM is seen within it (PROTOCOL.md "Session")."""
    first_ms = max(100, int(first_wait * 1000))
    # gRPC jitters each of its backoffs by +-20 % (doc/connection-backoff.md): the cap is divided
    # by 1.2 so a jittered retry still comes within the agent's cap.
    cap_ms = max(first_ms, int(cap * 1000 / 1.2))
    # grpc.min_reconnect_backoff_ms stays as CHANNEL_OPTIONS has it: gRPC core uses it as the
    # shortest connect deadline (TCP + TLS handshake), not as a wait.
    return [("grpc.initial_reconnect_backoff_ms", first_ms), ("grpc.max_reconnect_backoff_ms", cap_ms)]


def make_channel(target: str, credentials: Optional[grpc.ChannelCredentials],
                 overrides: Sequence[Tuple[str, int]] = ()) -> grpc.Channel:
    """A channel with CHANNEL_OPTIONS, each replaced by an override of the same name."""
    options = list({**dict(CHANNEL_OPTIONS), **dict(overrides)}.items())
    if credentials is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, credentials, options=options)


def get_blobs_infos(
    channel: grpc.Channel,
) -> grpc.UnaryUnaryMultiCallable[sm_pb2.BlobsInfosRequest, sm_pb2.BlobsInfos]:
    return channel.unary_unary(
        GET_BLOBS_INFOS,
        request_serializer=sm_pb2.BlobsInfosRequest.SerializeToString,
        response_deserializer=sm_pb2.BlobsInfos.FromString,
    )

"""The gateway's transport port, its gRPC adapter, and the blob-URL client built on the port.

The gateway (agent/gateway.py) sees CM only through these Protocols: a ``Transport`` makes one
``Connection`` per attempt (fresh credentials and channel), a connection opens the RegisterSM
``Stream`` and answers the unary GetBlobsInfos. Tests run the gateway over an in-memory fake
(tests/agent/fake_transport.py); ``GrpcTransport`` is the one real adapter.

Incoming frames stay raw bytes: the dispatcher parses each one itself (agent/incoming.py), so
a frame that does not decode costs that message, never the stream (gRPC's own deserializer
would fail the whole call).

Failures are ``TransportFailure`` carrying a gRPC status code name, which the session core's
policy (statemachine/status.py) turns into a pace and a kind of problem.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path
from typing import Any, Callable, List, Optional, Protocol, Sequence, Tuple

import grpc

from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

from . import rpc
from .config import AgentConfig
from .errors import AosError, Failed, NotFound, Timeout, WrongState
from .writequeue import WriteQueue

log = logging.getLogger(__name__)


class TransportFailure(Failed):
    """A connect or a stream failed; ``code`` is a grpc.StatusCode name ("OK": CM ended it)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class Stream(Protocol):
    def send(self, message: sm_pb2.SMOutgoingMessages) -> None:
        """Queue one message; never blocks on the network."""

    def backlog(self) -> int:
        """Messages queued and not yet taken by the transport."""

    def receive(self) -> bytes:
        """The next raw frame from CM; raises ``TransportFailure`` when the stream ends."""

    def close(self) -> None:
        """Half-close and cancel; a blocked ``receive`` then raises."""


class Connection(Protocol):
    def wait_ready(self, timeout: float) -> None:
        """Block until CM is reachable (and, with TLS, verified); raises ``TransportFailure``."""

    def open_stream(self, first: Sequence[sm_pb2.SMOutgoingMessages]) -> Stream:
        """Start RegisterSM with ``first`` written before anything else, in order."""

    def get_blobs_infos(self, digests: Sequence[str], timeout: float) -> List[str]:
        """GetBlobsInfos: URLs in request order; raises an ``AosError``."""

    def close(self) -> None: ...


class Transport(Protocol):
    def connect(self) -> Connection:
        """A fresh connection (credentials read now); raises ``TransportFailure`` on a local
        problem (code FAILED_PRECONDITION)."""


# --- gRPC ----------------------------------------------------------------------------------------


class GrpcStream:
    def __init__(self, channel: grpc.Channel, first: Sequence[sm_pb2.SMOutgoingMessages]) -> None:
        self._writes: WriteQueue[sm_pb2.SMOutgoingMessages] = WriteQueue()
        for message in first:  # queued before the call starts, so gRPC writes them first
            self._writes.put(message)
        # No response deserializer: frames arrive as bytes (see the module docstring).
        # A call object that is both a grpc.Call and an iterator of raw frames.
        self._call: Any = channel.stream_stream(
            rpc.REGISTER_SM, request_serializer=sm_pb2.SMOutgoingMessages.SerializeToString
        )(iter(self._writes))

    def send(self, message: sm_pb2.SMOutgoingMessages) -> None:
        self._writes.put(message)

    def backlog(self) -> int:
        return self._writes.backlog()

    def receive(self) -> bytes:
        try:
            frame = next(self._call)
        except StopIteration:
            raise TransportFailure("OK", "CM ended the stream") from None
        except grpc.RpcError as err:
            code, details = _status(err)
            raise TransportFailure(code, f"{code}: {details}") from err
        return bytes(frame)

    def close(self) -> None:
        self._writes.close()
        self._call.cancel()


class GrpcConnection:
    def __init__(self, channel: grpc.Channel) -> None:
        self._channel = channel
        self._ready = grpc.channel_ready_future(channel)

    def wait_ready(self, timeout: float) -> None:
        try:
            self._ready.result(timeout=timeout)
        except grpc.FutureTimeoutError as err:
            raise TransportFailure("UNAVAILABLE", f"CM not ready within {timeout}s "
                                   "(unreachable, or its certificate is not trusted)") from err
        except grpc.FutureCancelledError as err:
            raise TransportFailure("CANCELLED", "connect cancelled") from err

    def open_stream(self, first: Sequence[sm_pb2.SMOutgoingMessages]) -> GrpcStream:
        return GrpcStream(self._channel, first)

    def get_blobs_infos(self, digests: Sequence[str], timeout: float) -> List[str]:
        try:
            reply = rpc.get_blobs_infos(self._channel)(
                sm_pb2.BlobsInfosRequest(digests=list(digests)), timeout=timeout
            )
        except grpc.RpcError as err:
            code, details = _status(err)
            error: AosError
            if code == "NOT_FOUND":
                error = NotFound(f"CM knows no URL for a digest: {details}")
            elif code == "DEADLINE_EXCEEDED":
                error = Timeout(f"GetBlobsInfos timed out after {timeout}s")
            else:
                error = Failed(f"GetBlobsInfos failed: {code} {details}")
            raise error from err
        return list(reply.urls)

    def close(self) -> None:
        self._ready.cancel()
        self._channel.close()


class GrpcTransport:
    """Channels to ``target`` with credentials from ``config``, read on every connect.

    ``before_connect`` runs first on every attempt: the hook for checks of the node's own
    certificate, key and CA (an ``AosError`` it raises fails the attempt as a configuration
    problem, with its message in the log and STATUS=).

    ``client_certificate``, when given, names the (certificate, key) files to present instead of
    ``certFile``/``keyFile``: with IAM it asks IAM on every connect, so a renewed certificate is
    the one the next session presents. It may raise ``TransportFailure`` (IAM unreachable: its
    code sets the retry pace) or another ``AosError`` (a configuration problem)."""

    def __init__(self, config: AgentConfig, target: str, *,
                 before_connect: Optional[Callable[[], None]] = None,
                 client_certificate: Optional[Callable[[], Tuple[Path, Path]]] = None) -> None:
        self._config = config
        self.target = target
        self._before_connect = before_connect
        self._client_certificate = client_certificate

    def connect(self) -> GrpcConnection:
        try:
            if self._before_connect is not None:
                self._before_connect()
            config = self._config
            if self._client_certificate is not None:
                cert_file, key_file = self._client_certificate()
                config = dataclasses.replace(config, tls_mode="mtls", cert_file=cert_file, key_file=key_file)
            credentials = rpc.make_credentials(config)
        except TransportFailure:
            raise
        except AosError as err:
            raise TransportFailure("FAILED_PRECONDITION", str(err)) from err
        return GrpcConnection(rpc.make_channel(
            self.target, credentials,
            rpc.reconnect_options(self._config.reconnect_first_wait, self._config.reconnect_cap)))


def _status(err: grpc.RpcError) -> Tuple[str, str]:
    if isinstance(err, grpc.Call):
        code = err.code()
        return (code.name if code is not None else "UNKNOWN"), (err.details() or "")
    return "UNKNOWN", str(err)


# --- Blob URLs -----------------------------------------------------------------------------------


class BlobUrlClient:
    """GetBlobsInfos over whichever connection is live: what the launcher is given.

    The gateway attaches the connection of each synced session and detaches it on close; a
    call with no live session is a clear ``WrongState``, never a wait."""

    def __init__(self, timeout: float = 30.0) -> None:
        self._timeout = timeout
        self._lock = threading.Lock()
        self._connection: Optional[Connection] = None

    def attach(self, connection: Connection) -> None:
        with self._lock:
            self._connection = connection

    def detach(self, connection: Connection) -> None:
        with self._lock:
            if self._connection is connection:
                self._connection = None

    def __call__(self, digests: List[str]) -> List[str]:
        """Resolve blob digests to URLs through CM, in request order."""
        with self._lock:
            connection = self._connection
        if connection is None:
            raise WrongState("not connected to CM: cannot resolve blob URLs")
        urls = connection.get_blobs_infos(digests, self._timeout)
        if len(urls) != len(digests):
            raise Failed(f"GetBlobsInfos returned {len(urls)} URLs for {len(digests)} digests")
        return urls

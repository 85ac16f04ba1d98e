"""A test CM built from the wire contract alone, never from our generated code.

The message classes come from ``contract.py``, which builds them from
``tests/data/servicemanager-v5.tsv`` in a private descriptor pool; see there for why.

Theory of operation:
- ``Contract`` is the TSV turned into message classes (one private pool per ``Contract``).
- ``ContractCM`` is a real ``grpc.server`` on 127.0.0.1 serving ``SMService``: each RegisterSM
  stream becomes a ``CMSession``; GetBlobsInfos answers from ``blob_urls``.
- A ``CMSession`` records every decoded ``SMOutgoingMessages`` and lets a test wait for a kind
  (the oneof field name) and send commands. Nothing here sleeps: waits are on Conditions with
  timeouts, and a wait fails at once when the stream has ended and no match can arrive any more.

Like the reference CM (aos_core_cpp), a session ends when the SM stops writing (its read loop
ends), when the SM cancels, or when the test calls ``close()``.
"""
from __future__ import annotations

import queue
import random
import struct
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Optional, Union

import grpc
from google.protobuf.message import Message

from contract import Contract, ContractCMError, kind_of, length_delimited_field, message_to_dict

SERVICE_NAME = "servicemanager.v5.SMService"
REGISTER_SM = f"/{SERVICE_NAME}/RegisterSM"
GET_BLOBS_INFOS = f"/{SERVICE_NAME}/GetBlobsInfos"

# Permissive enough for the reference client args (keepalive ping every 10 s, pings without
# calls): gRPC's server default answers such pings with GOAWAY "too_many_pings" after 5 minutes.
# so_reuseport=0 so that a second CM on a busy port fails loudly instead of sharing it.
SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 1000),
    ("grpc.http2.min_time_between_pings_ms", 1000),  # the pre-1.20 name of the same limit
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.so_reuseport", 0),
)


class CMWaitTimeout(ContractCMError, TimeoutError):
    """A wait ran out of time; the message says what did arrive."""


class SessionClosed(ContractCMError):
    """The stream has ended: nothing more can be sent, nothing more will arrive."""


# ---------------------------------------------------------------------------------------------
# Contract TSV -> FileDescriptorProtos
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# The server side
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Close:
    code: Optional[grpc.StatusCode]
    details: str


Predicate = Callable[[Any], bool]


class CMSession:
    """One RegisterSM stream, seen from the CM."""

    def __init__(self, contract: Contract, index: int, context: grpc.ServicerContext) -> None:
        self.contract = contract
        self.index = index
        self.peer: str = context.peer()
        self.auth_context: dict[str, list[bytes]] = dict(context.auth_context())
        certs = self.auth_context.get("x509_pem_cert") or []
        self.peer_cert: Optional[bytes] = certs[0] if certs else None
        self.closed = threading.Event()
        self.read_error: Optional[BaseException] = None
        self._cond = threading.Condition()
        self._received: list[Message] = []
        self._taken: set[int] = set()
        self._reading = True
        self._outgoing: queue.SimpleQueue[Union[bytes, _Close]] = queue.SimpleQueue()

    # --- what the SM sent

    @property
    def received(self) -> list[Message]:
        """Every decoded SMOutgoingMessages so far (a snapshot)."""
        with self._cond:
            return list(self._received)

    def kinds(self) -> list[str]:
        """The oneof name of each received message, in arrival order."""
        return [kind_of(message) or "<none>" for message in self.received]

    def messages(self, kind: str) -> list[Any]:
        """The inner messages of every received ``kind``, in arrival order."""
        self._check_outgoing_kind(kind)
        return [getattr(m, kind) for m in self.received if kind_of(m) == kind]

    def wait_for(
        self, kind: str, timeout: float = 5.0, predicate: Optional[Predicate] = None
    ) -> Any:
        """The earliest ``kind`` message (matching ``predicate``) no earlier wait_for returned.

        Each message is handed out once, so request/reply sequences read naturally: two
        ``wait_for("node_config_status")`` calls return two different replies. Raises
        ``CMWaitTimeout`` after ``timeout`` and ``SessionClosed`` as soon as the stream has ended
        with no match left.
        """
        self._check_outgoing_kind(kind)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for index, message in enumerate(self._received):
                    if index in self._taken or kind_of(message) != kind:
                        continue
                    inner = getattr(message, kind)
                    if predicate is None or predicate(inner):
                        self._taken.add(index)
                        return inner
                if not self._reading:
                    raise SessionClosed(
                        f"session {self.index} ended without a matching {kind}; "
                        f"received {self._kinds_locked()}, read error {self.read_error!r}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise CMWaitTimeout(
                        f"no matching {kind} within {timeout}s on session {self.index}; "
                        f"received {self._kinds_locked()}"
                    )
                self._cond.wait(remaining)

    def _kinds_locked(self) -> list[str]:
        return [kind_of(message) or "<none>" for message in self._received]

    def _check_outgoing_kind(self, kind: str) -> None:
        # A typo would otherwise look like an SM that never answers.
        if kind not in self.contract.outgoing_kinds:
            raise ValueError(
                f"{kind!r} is not an SM->CM kind; the contract has {self.contract.outgoing_kinds}"
            )

    # --- what the CM sends

    def send(self, kind: str, payload: Union[Mapping[str, Any], Message, None] = None) -> None:
        """Queue an SMIncomingMessages with ``kind`` set (dict in protobuf JSON, or a message)."""
        self.send_raw(self.contract.encode(kind, payload))

    def send_raw(self, data: bytes) -> None:
        """Queue ``data`` as one frame, unchecked: garbage and unknown fields go out as given."""
        if self.closed.is_set():
            raise SessionClosed(f"session {self.index} is closed")
        self._outgoing.put(bytes(data))

    def close(self, code: Optional[grpc.StatusCode] = None, details: str = "") -> None:
        """End the stream from the CM: OK status, or ``code`` with ``details``."""
        self._outgoing.put(_Close(code, details))

    def wait_closed(self, timeout: float = 5.0) -> bool:
        """True once the RPC has terminated (either side, any status)."""
        return self.closed.wait(timeout)

    def to_dicts(self) -> list[dict[str, Any]]:
        return [message_to_dict(message) for message in self.received]

    # --- driven by the server

    def _read_all(self, requests: Iterator[Message]) -> None:
        try:
            for message in requests:
                with self._cond:
                    self._received.append(message)
                    self._cond.notify_all()
        except Exception as err:  # grpc.RpcError on cancel, DecodeError on a bad frame
            self.read_error = err
        finally:
            with self._cond:
                self._reading = False
                self._cond.notify_all()
            # The reference CM returns from RegisterSM when Read() fails, which ends the stream.
            self._outgoing.put(_Close(None, ""))

    def _responses(self, context: grpc.ServicerContext) -> Iterator[bytes]:
        while True:
            item = self._outgoing.get()
            if isinstance(item, _Close):
                if item.code is not None:
                    context.set_code(item.code)
                    context.set_details(item.details)
                return
            yield item

    def _on_done(self) -> None:
        self.closed.set()
        # Wakes _responses, which is parked on the queue when the SM goes away first.
        self._outgoing.put(_Close(None, ""))
        with self._cond:
            self._cond.notify_all()


class ContractCM:
    """A real gRPC CM on 127.0.0.1 that speaks only what the contract says."""

    def __init__(
        self,
        contract: Optional[Contract] = None,
        *,
        port: int = 0,
        credentials: Optional[grpc.ServerCredentials] = None,
        max_workers: int = 16,
    ) -> None:
        self.contract = contract if contract is not None else Contract()
        self.credentials = credentials
        self.blob_urls: dict[str, str] = {}
        self.blob_requests: list[list[str]] = []
        self._requested_port = port
        self._port = 0
        self._max_workers = max_workers
        self._server: Optional[grpc.Server] = None
        self._cond = threading.Condition()
        self._sessions: list[CMSession] = []

    @property
    def port(self) -> int:
        if not self._port:
            raise ContractCMError("the CM is not started")
        return self._port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "ContractCM":
        server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=self._max_workers, thread_name_prefix="contract-cm"
            ),
            handlers=[self._handler()],
            options=SERVER_OPTIONS,
        )
        port = self._bind(server, f"127.0.0.1:{self._requested_port}")
        server.start()
        self._server, self._port = server, port
        return self

    def _bind(self, server: grpc.Server, address: str) -> int:
        try:
            if self.credentials is None:
                port = server.add_insecure_port(address)
            else:
                port = server.add_secure_port(address, self.credentials)
        except RuntimeError as err:  # grpcio >= 1.55 raises; older ones return 0
            raise ContractCMError(f"cannot listen on {address}: {err}") from err
        if port == 0:
            raise ContractCMError(f"cannot listen on {address}")
        return int(port)

    def stop(self, grace: Optional[float] = 0) -> None:
        """Stop serving; open streams are cancelled (after ``grace`` seconds)."""
        server, self._server = self._server, None
        if server is not None:
            server.stop(grace).wait(timeout=10)

    def __enter__(self) -> "ContractCM":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def sessions(self) -> list[CMSession]:
        with self._cond:
            return list(self._sessions)

    def wait_session(self, index: int = -1, timeout: float = 5.0) -> CMSession:
        """Session ``index`` (Python indexing: -1 is the latest) once that many have started."""
        needed = index + 1 if index >= 0 else -index
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._sessions) >= needed, timeout):
                raise CMWaitTimeout(
                    f"{len(self._sessions)} session(s) within {timeout}s, wanted session {index}"
                )
            return self._sessions[index]

    def _handler(self) -> grpc.GenericRpcHandler:
        contract = self.contract
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "RegisterSM": grpc.stream_stream_rpc_method_handler(
                    self._register_sm,
                    request_deserializer=contract.outgoing.FromString,
                    response_serializer=None,  # identity: CMSession queues encoded frames
                ),
                "GetBlobsInfos": grpc.unary_unary_rpc_method_handler(
                    self._get_blobs_infos,
                    request_deserializer=contract.blobs_request.FromString,
                    response_serializer=contract.blobs_infos.SerializeToString,
                ),
            },
        )

    def _register_sm(
        self, requests: Iterator[Message], context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        with self._cond:
            session = CMSession(self.contract, len(self._sessions), context)
            self._sessions.append(session)
            self._cond.notify_all()
        if not context.add_callback(session._on_done):
            session._on_done()  # already terminated
        reader = threading.Thread(
            target=session._read_all,
            args=(requests,),
            name=f"cm-session-{session.index}",
            daemon=True,
        )
        reader.start()
        return session._responses(context)

    def _get_blobs_infos(self, request: Any, context: grpc.ServicerContext) -> Message:
        digests = list(request.digests)
        with self._cond:
            self.blob_requests.append(digests)
            known = dict(self.blob_urls)
        missing = [digest for digest in digests if digest not in known]
        if missing:
            context.abort(
                grpc.StatusCode.NOT_FOUND, f"unknown blob digest(s): {', '.join(missing)}"
            )
        return self.contract.blobs_infos(urls=[known[digest] for digest in digests])


# ---------------------------------------------------------------------------------------------
# Raw frames a hostile or newer CM sends (``CMSession.send_raw`` puts them on the wire as given)
# ---------------------------------------------------------------------------------------------


def random_frames(seed: int, count: int, max_length: int = 48) -> Iterator[bytes]:
    """``count`` random frames (up to ``max_length`` bytes), the same for the same seed.

    Half are random bytes, most of them not protobuf at all. The other half select a request
    kind (field 1 to 10 of SMIncomingMessages, well framed) around a random payload, so every
    kind's undecodable path is hit; a few of those decode, as a hostile CM's mix would."""
    rng = random.Random(seed)
    for number in range(count):
        payload = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, max_length)))
        yield payload if number % 2 else length_delimited_field(rng.randint(1, 10), payload)


def v91_update_instances(contract: Contract, item_id: str, *, instance: int = 0) -> bytes:
    """An UpdateInstances as a CM of aos_core_api v9.1 encodes it: InstanceInfo field 12 holds
    the instance's alert rules (an AlertRules message), where v5 has NetworkParameters.

    The rules' thresholds are doubles whose bytes are not UTF-8, so read as v5's
    ``network_parameters.network_id`` string they do not decode (protobuf checks proto3 strings)."""
    info = contract.message_class("servicemanager.v5.InstanceInfo")()
    info.instance.item_id = item_id
    info.instance.subject_id = "subject1"
    info.instance.instance = instance
    info.version = "1.0.0"
    info.runtime_id = "runc"
    ram_rule = (length_delimited_field(1, b"\x08\x05")  # min_timeout: Duration{seconds: 5}
                + b"\x11" + struct.pack("<d", 0.8)  # min_threshold
                + b"\x19" + struct.pack("<d", 0.95))  # max_threshold
    alert_rules = length_delimited_field(1, ram_rule)  # AlertRules.ram
    instance_info = bytes(info.SerializeToString()) + length_delimited_field(12, alert_rules)
    update_instances = length_delimited_field(1, instance_info)  # start_instances
    return length_delimited_field(4, update_instances)  # SMIncomingMessages.update_instances


# What the ``contract_cm_factory`` fixture yields: ``make(port=0, credentials=None) -> ContractCM``.
CMFactory = Callable[..., ContractCM]

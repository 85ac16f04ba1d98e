"""A CM simulator for development: a real gRPC server that speaks servicemanager v5 to an SM.

It accepts RegisterSM streams, records and prints what the SM sends, lets a person (or the demo)
send CM's commands, and answers GetBlobsInfos from a table. It uses the agent's own message
classes; the tests use a separate CM built straight from the wire contract.
"""

from __future__ import annotations

import json
import logging
import threading
from concurrent import futures
from typing import Any, Callable, Dict, Iterator, List, Optional

import grpc
from google.protobuf import json_format

from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

from . import rpc
from .writequeue import WriteQueue

log = logging.getLogger(__name__)

SERVER_OPTIONS = [
    # Accept the SM's 10 s keepalive pings even with no data in flight.
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
]


def to_json(message: object) -> str:
    return json_format.MessageToJson(message, indent=None)  # type: ignore[arg-type]


class SimSession:
    """One RegisterSM stream, seen from CM's side."""

    def __init__(self, number: int, on_message: Callable[["SimSession", sm_pb2.SMOutgoingMessages], None]) -> None:
        self.number = number
        self.received: List[sm_pb2.SMOutgoingMessages] = []
        self._on_message = on_message
        self._outgoing: WriteQueue[sm_pb2.SMIncomingMessages] = WriteQueue()
        self._arrived = threading.Condition()
        self.closed = threading.Event()

    def send(self, message: sm_pb2.SMIncomingMessages) -> None:
        self._outgoing.put(message)

    def end(self) -> None:
        self._outgoing.close()

    def wait_for(self, kind: str, timeout: float = 5.0, after: int = 0) -> Optional[object]:
        """The first message of ``kind`` at index >= ``after``, waiting up to ``timeout``."""
        def find() -> Optional[object]:
            for message in self.received[after:]:
                if message.WhichOneof("SMOutgoingMessage") == kind:
                    inner: object = getattr(message, kind)
                    return inner
            return None

        with self._arrived:
            self._arrived.wait_for(lambda: find() is not None or self.closed.is_set(), timeout)
            return find()

    def _record(self, message: sm_pb2.SMOutgoingMessages) -> None:
        with self._arrived:
            self.received.append(message)
            self._arrived.notify_all()
        self._on_message(self, message)

    def _finish(self) -> None:
        with self._arrived:
            self.closed.set()
            self._arrived.notify_all()


class SimulatedCM:
    def __init__(
        self,
        address: str = "127.0.0.1:0",
        *,
        credentials: Optional[grpc.ServerCredentials] = None,
        on_message: Optional[Callable[[SimSession, sm_pb2.SMOutgoingMessages], None]] = None,
    ) -> None:
        self.blob_urls: Dict[str, str] = {}
        self.sessions: List[SimSession] = []
        self._on_message = on_message or (lambda _session, _message: None)
        self._new_session = threading.Condition()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=SERVER_OPTIONS)
        handlers: Dict[str, grpc.RpcMethodHandler[Any, Any]] = {
            "RegisterSM": grpc.stream_stream_rpc_method_handler(
                self._register_sm,
                request_deserializer=sm_pb2.SMOutgoingMessages.FromString,
                response_serializer=sm_pb2.SMIncomingMessages.SerializeToString,
            ),
            "GetBlobsInfos": grpc.unary_unary_rpc_method_handler(
                self._get_blobs_infos,
                request_deserializer=sm_pb2.BlobsInfosRequest.FromString,
                response_serializer=sm_pb2.BlobsInfos.SerializeToString,
            ),
        }
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(rpc.SERVICE, handlers),))
        if credentials is None:
            self.port = self._server.add_insecure_port(address)
        else:
            self.port = self._server.add_secure_port(address, credentials)
        if self.port == 0:
            raise OSError(f"cannot listen on {address}")
        self.address = f"{address.rsplit(':', 1)[0]}:{self.port}"

    def start(self) -> "SimulatedCM":
        self._server.start()
        return self

    def stop(self, grace: Optional[float] = None) -> None:
        for session in list(self.sessions):
            session.end()
        self._server.stop(grace).wait()

    def wait_session(self, count: int = 1, timeout: float = 10.0) -> Optional[SimSession]:
        """The ``count``-th session (1-based) once it has started."""
        with self._new_session:
            self._new_session.wait_for(lambda: len(self.sessions) >= count, timeout)
            return self.sessions[count - 1] if len(self.sessions) >= count else None

    @property
    def current(self) -> Optional[SimSession]:
        return self.sessions[-1] if self.sessions else None

    def _register_sm(self, requests: Iterator[sm_pb2.SMOutgoingMessages],
                     context: grpc.ServicerContext) -> Iterator[sm_pb2.SMIncomingMessages]:
        with self._new_session:
            session = SimSession(len(self.sessions) + 1, self._on_message)
            self.sessions.append(session)
            self._new_session.notify_all()

        def read() -> None:
            try:
                for message in requests:
                    session._record(message)
            except grpc.RpcError:
                pass
            finally:
                session.end()
                session._finish()

        threading.Thread(target=read, name=f"cmsim-read-{session.number}", daemon=True).start()
        context.add_callback(session.end)
        yield from session._outgoing

    def _get_blobs_infos(self, request: sm_pb2.BlobsInfosRequest, context: grpc.ServicerContext) -> sm_pb2.BlobsInfos:
        missing = [digest for digest in request.digests if digest not in self.blob_urls]
        if missing:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown digests: {', '.join(missing)}")
        return sm_pb2.BlobsInfos(urls=[self.blob_urls[digest] for digest in request.digests])


# Commands a person types into `aos-sm cm-sim`; each builds one SMIncomingMessages.

def _node_config_args(args: List[str]) -> Dict[str, str]:
    if not args:
        raise ValueError("usage: check-config|set-config VERSION [JSON]")
    version, text = args[0], " ".join(args[1:]) or json.dumps(
        {"version": args[0], "nodeGroupSubject": {"codename": "demo"}}
    )
    return {"node_config": text, "version": version}


def command_message(line: str) -> sm_pb2.SMIncomingMessages:
    """Turn one typed command into a CM message; raises ValueError with usage on a bad line."""
    words = line.split()
    if not words:
        raise ValueError("empty command")
    name, args = words[0], words[1:]
    In = sm_pb2.SMIncomingMessages
    if name == "get-config":
        return In(get_node_config_status=sm_pb2.GetNodeConfigStatus())
    if name == "check-config":
        return In(check_node_config=sm_pb2.CheckNodeConfig(**_node_config_args(args)))
    if name == "set-config":
        return In(set_node_config=sm_pb2.SetNodeConfig(**_node_config_args(args)))
    if name == "average":
        return In(get_average_monitoring=sm_pb2.GetAverageMonitoring())
    if name == "system-log":
        return In(system_log_request=sm_pb2.SystemLogRequest(correlation_id=args[0] if args else "log-1"))
    if name == "cloud":
        connected = bool(args) and args[0] in ("on", "connected", "1")
        return In(connection_status=sm_pb2.ConnectionStatus(
            cloud_status=sm_pb2.CONNECTED if connected else sm_pb2.DISCONNECTED))
    if name == "start":
        if not args:
            raise ValueError("usage: start ITEM_ID [RUNTIME_ID]")
        info = sm_pb2.InstanceInfo(version="1.0.0", manifest_digest="sha256:" + "0" * 64,
                                   runtime_id=args[1] if len(args) > 1 else "")
        info.instance.item_id = args[0]
        info.instance.subject_id = "demo"
        return In(update_instances=sm_pb2.UpdateInstances(start_instances=[info]))
    if name == "send":
        if len(args) < 2:
            raise ValueError("usage: send KIND JSON   (e.g. send update_networks {\"networks\": []})")
        return json_format.Parse(json.dumps({args[0]: json.loads(" ".join(args[1:]))}), In())
    raise ValueError(f"unknown command {name!r}; try: {HELP}")


HELP = ("get-config | check-config VERSION [JSON] | set-config VERSION [JSON] | average | "
        "system-log [ID] | cloud on|off | start ITEM [RUNTIME_ID] | send KIND JSON | quit")

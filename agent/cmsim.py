"""A CM simulator for development: a real gRPC server that speaks servicemanager v5 to an SM.

It accepts RegisterSM streams, records and prints what the SM sends, lets a person (or the demo)
send CM's commands, and answers GetBlobsInfos from a table. It uses the agent's own message
classes; the tests use a separate CM built straight from the wire contract.
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import threading
from concurrent import futures
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional

import grpc
from google.protobuf import json_format

from aos_sm.proto.common.v2 import common_pb2
from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

from . import rpc
from .blobserver import BlobServer
from .demo_image import ServedImage
from .writequeue import WriteQueue

log = logging.getLogger(__name__)

SERVER_OPTIONS = [
    # Accept the SM's 10 s keepalive pings even with no data in flight.
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
    # gRPC sets SO_REUSEPORT by default: a second simulator on the same port would start silently
    # and take half the connections. A port in use must be an error.
    ("grpc.so_reuseport", 0),
]


class ListenError(OSError):
    """The simulator cannot listen where it was asked to (bad address, port in use)."""


def parse_listen(address: str, option: str = "--listen", port_example: int = 8093) -> str:
    """``address`` checked as HOST:PORT (``[v6]:PORT`` too); raises ValueError in one line naming
    ``option``."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{option} {address!r}: expected HOST:PORT, e.g. 127.0.0.1:{port_example} "
                         f"(0.0.0.0:{port_example} for every interface)")
    if host.startswith("[") != host.endswith("]") or (":" in host and not host.startswith("[")):
        raise ValueError(f"{option} {address!r}: write an IPv6 host in brackets, e.g. [::1]:{port_example}")
    return address


def check_port_free(address: str, in_use_hint: str = " (another CM or cm-sim?)") -> None:
    """Raise ListenError when ``address``'s port is taken (or its host is not this machine's).

    Tried with a plain socket before gRPC binds, because gRPC's own failure comes with a line of
    its C core's log on stderr."""
    host, _, port = address.rpartition(":")
    if int(port) == 0:
        return
    try:
        infos = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise ListenError(f"cannot listen on {address}: unknown host {host} ({err.strerror})") from err
    for family, kind, proto, _name, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds
            try:
                probe.bind(sockaddr)
            except OSError as err:
                if err.errno == errno.EADDRINUSE:
                    raise ListenError(f"cannot listen on {address}: the port is in use{in_use_hint}") from err
                raise ListenError(f"cannot listen on {address}: {err.strerror}") from err


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

    def wait_for(self, kind: str, timeout: float = 5.0, after: int = 0,
                 where: Callable[[Any], bool] = lambda _inner: True) -> Optional[Any]:
        """The first message of ``kind`` at index >= ``after`` for which ``where`` holds, waiting up
        to ``timeout``."""
        def find() -> Optional[Any]:
            for message in self.received[after:]:
                if message.WhichOneof("SMOutgoingMessage") == kind:
                    inner: Any = getattr(message, kind)
                    if where(inner):
                        return inner
            return None

        with self._arrived:
            self._arrived.wait_for(lambda: find() is not None or self.closed.is_set(), timeout)
            return find()

    @property
    def sm_info(self) -> Optional[sm_pb2.SMInfo]:
        """The SMInfo this session opened with, once it arrived."""
        for message in self.received:
            if message.WhichOneof("SMOutgoingMessage") == "sm_info":
                return message.sm_info
        return None

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
        self.image: Optional[ServedImage] = None  # the image `start` deploys (serve())
        self.blob_requests: List[List[str]] = []  # the digests of each GetBlobsInfos, in order
        self.sessions: List[SimSession] = []
        self._blob_server: Optional[BlobServer] = None
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
        check_port_free(address)
        try:
            if credentials is None:
                self.port = self._server.add_insecure_port(address)
            else:
                self.port = self._server.add_secure_port(address, credentials)
        except RuntimeError as err:  # newer grpcio raises; 1.51 returns port 0
            raise ListenError(f"cannot listen on {address}: the port is in use or the address is not "
                              "this machine's") from err
        if self.port == 0:
            raise ListenError(f"cannot listen on {address}: the port is in use or the address is not this machine's")
        self.host = address.rsplit(":", 1)[0]
        self.address = f"{self.host}:{self.port}"

    def serve(self, image: ServedImage) -> Dict[str, str]:
        """Serve ``image``'s blobs over HTTP (started on first use, on this simulator's host) and
        answer GetBlobsInfos with their URLs; ``start`` deploys it. Returns digest -> URL."""
        if self._blob_server is None:
            self._blob_server = BlobServer(self.host)
        urls = self._blob_server.publish(image.blobs)
        self.blob_urls.update(urls)
        self.image = image
        return urls

    def start(self) -> "SimulatedCM":
        self._server.start()
        return self

    def stop(self, grace: Optional[float] = None) -> None:
        for session in list(self.sessions):
            session.end()
        self._server.stop(grace).wait()
        if self._blob_server is not None:
            self._blob_server.close()

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
        self.blob_requests.append(list(request.digests))
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


@dataclass(frozen=True)
class CommandDefaults:
    """What a typed command takes when the line leaves it out: the runtime of the connected SM
    (its SMInfo's first) and the image the simulator serves."""

    runtime_id: str = ""
    runtime_note: str = ""  # how that runtime was chosen, said when `start` uses it
    manifest_digest: str = ""


def defaults_for(session: Optional[SimSession], image: Optional[ServedImage]) -> CommandDefaults:
    sm_info = session.sm_info if session is not None else None
    runtimes = list(sm_info.runtimes) if sm_info is not None else []
    note = ""
    if runtimes:
        first = runtimes[0]
        note = f"runtime {first.runtime_id} ({first.type}, the first of {len(runtimes)} in the SM's SMInfo)"
    return CommandDefaults(runtimes[0].runtime_id if runtimes else "", note,
                           image.manifest_digest if image is not None else "")


def instance_ident(item_id: str) -> common_pb2.InstanceIdent:
    return common_pb2.InstanceIdent(item_id=item_id, subject_id=DEMO_SUBJECT, instance=0)


DEMO_SUBJECT = "demo"
DEMO_UID = 5000  # an unprivileged user: CM hands every service its own uid and gid


def start_instance(item_id: str, runtime_id: str, manifest_digest: str) -> sm_pb2.SMIncomingMessages:
    """UpdateInstances starting instance 0 of ``item_id`` for subject ``demo``."""
    info = sm_pb2.InstanceInfo(version="1.0.0", manifest_digest=manifest_digest, runtime_id=runtime_id,
                               uid=DEMO_UID, gid=DEMO_UID)
    info.instance.CopyFrom(instance_ident(item_id))
    return sm_pb2.SMIncomingMessages(update_instances=sm_pb2.UpdateInstances(start_instances=[info]))


def command_message(line: str, defaults: CommandDefaults = CommandDefaults()) -> sm_pb2.SMIncomingMessages:
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
    if name == "log":
        if not args:
            raise ValueError("usage: log ITEM [CORRELATION_ID]")
        request = sm_pb2.InstanceLogRequest(correlation_id=args[1] if len(args) > 1 else f"log-{args[0]}")
        request.filter.item_id, request.filter.instance = args[0], -1
        return In(instance_log_request=request)
    if name == "cloud":
        connected = bool(args) and args[0] in ("on", "connected", "1")
        return In(connection_status=sm_pb2.ConnectionStatus(
            cloud_status=sm_pb2.CONNECTED if connected else sm_pb2.DISCONNECTED))
    if name == "start":
        if not args:
            raise ValueError("usage: start ITEM [RUNTIME_ID]")
        runtime = args[1] if len(args) > 1 else defaults.runtime_id
        if not runtime:
            raise ValueError("start: the SM registered no runtime (see its SMInfo); give one: start ITEM RUNTIME_ID")
        if not defaults.manifest_digest:
            raise ValueError("start: this simulator serves no image; restart it with --image DIR (an OCI layout)")
        return start_instance(args[0], runtime, defaults.manifest_digest)
    if name == "stop":
        if not args:
            raise ValueError("usage: stop ITEM")
        return In(update_instances=sm_pb2.UpdateInstances(stop_instances=[instance_ident(args[0])]))
    if name == "send":
        if len(args) < 2:
            raise ValueError("usage: send KIND JSON   (e.g. send update_networks {\"networks\": []})")
        try:
            return json_format.Parse(json.dumps({args[0]: json.loads(" ".join(args[1:]))}), In())
        except json_format.ParseError as err:
            raise ValueError(f"send: {err}") from err
    raise ValueError(f"unknown command {name!r}; try: {HELP}")


HELP = ("get-config | check-config VERSION [JSON] | set-config VERSION [JSON] | average | "
        "system-log [ID] | cloud on|off | start ITEM [RUNTIME_ID] | stop ITEM | log ITEM [ID] | "
        "send KIND JSON | quit")

"""A fake IAM on the generated iamanager v6 services: for tests, `aos-sm iam-sim` and the demo.

It serves the public server over TLS (no client certificate) and the protected server over mTLS,
both with certificates from its own test CA (agent/iam/pki.py); node info it was given; for each
certificate type a client certificate as ``file://`` URLs, renewed on demand (``renew``), which
pushes the new CertInfo to every ``SubscribeCertChanged``; RegisterInstance answers a random
secret and keeps it until UnregisterInstance. Handlers are built from the service descriptors
(agent/iam/rpc.py), so the fake answers exactly the contract's methods.
"""

from __future__ import annotations

import logging
import platform
import queue
import secrets
import threading
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import grpc
from google.protobuf import empty_pb2

from aos_sm.proto.common.v2 import common_pb2
from aos_sm.proto.iamanager.v6 import iamanager_pb2 as iam_pb2

from . import rpc
from .certurl import file_url
from .pki import IssuedCert, TestCA

log = logging.getLogger(__name__)
# A second simulator on a taken port fails instead of sharing it (gRPC sets SO_REUSEPORT).
SERVER_OPTIONS = [("grpc.so_reuseport", 0)]

InstanceKey = Tuple[str, str, int]


# uname -m -> GOARCH and variant, as IAM states the architecture (IAM.md).
_GOARCH = {"x86_64": ("amd64", ""), "aarch64": ("arm64", "v8"), "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6")}


def default_node_info(node_id: str = "iam-node-1") -> iam_pb2.NodeInfo:
    """A node like this machine (its architecture), with a round DMIPS figure of IAM's own."""
    architecture, variant = _GOARCH.get(platform.machine(), (platform.machine(), ""))
    return iam_pb2.NodeInfo(
        node_id=node_id, node_type="main", title="simulated node", max_dmips=12345,
        total_ram=2 * 1024**3, os_info=common_pb2.OSInfo(os="linux", version="6.1-sim"),
        cpus=[iam_pb2.CPUInfo(model_name="sim", num_cores=2, num_threads=2, max_dmips=12345,
                              arch_info=common_pb2.ArchInfo(architecture=architecture, variant=variant))],
        state="provisioned")


@dataclass
class _Subscribers:
    queues: List["queue.Queue[Optional[Any]]"] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self) -> "queue.Queue[Optional[Any]]":
        q: "queue.Queue[Optional[Any]]" = queue.Queue()
        with self.lock:
            self.queues.append(q)
        return q

    def remove(self, q: "queue.Queue[Optional[Any]]") -> None:
        with self.lock:
            if q in self.queues:
                self.queues.remove(q)

    def push(self, message: Optional[Any]) -> int:
        with self.lock:
            targets = list(self.queues)
        for q in targets:
            q.put(message)
        return len(targets)


def _key(instance: common_pb2.InstanceIdent) -> InstanceKey:
    return (instance.item_id, instance.subject_id, instance.instance)


class SimulatedIAM:
    """``directory`` holds the CA and certificates; ``cert_types`` the types IAM hands out."""

    def __init__(self, directory: Path, *, node_info: Optional[iam_pb2.NodeInfo] = None,
                 public_listen: str = "127.0.0.1:0", protected_listen: str = "127.0.0.1:0",
                 cert_types: Tuple[str, ...] = ("sm",), hosts: Tuple[str, ...] = ("127.0.0.1", "localhost")) -> None:
        self.ca = TestCA(directory)
        self.node_info = node_info if node_info is not None else default_node_info()
        self._hosts = hosts
        self._server_cert = self.ca.issue("iam-server", server=True, hosts=hosts)
        self.certs: Dict[str, IssuedCert] = {kind: self.ca.issue(kind) for kind in cert_types}
        # Tests set a URL here to play an IAM whose key lives in a token (pkcs11:...).
        self.key_url_override: Dict[str, str] = {}
        self.registered: Dict[InstanceKey, Tuple[str, Dict[str, Dict[str, str]]]] = {}
        self.unregistered: List[InstanceKey] = []
        self.register_error: Optional[Tuple[grpc.StatusCode, str]] = None
        self._public_listen, self._protected_listen = public_listen, protected_listen
        self._cert_subscribers: Dict[str, _Subscribers] = {}
        self._node_subscribers = _Subscribers()
        self._lock = threading.Lock()
        self._servers: List[grpc.Server] = []
        self.public_port = 0
        self.protected_port = 0

    # --- control

    @property
    def public_address(self) -> str:
        return f"127.0.0.1:{self.public_port}"

    @property
    def protected_address(self) -> str:
        return f"127.0.0.1:{self.protected_port}"

    def issue_server_cert(self, name: str) -> IssuedCert:
        """A server certificate from this IAM's CA (for a CM that SMs of this IAM must trust)."""
        return self.ca.issue(name, server=True, hosts=self._hosts)

    def renew(self, cert_type: str = "sm") -> IssuedCert:
        """Issue a new key and certificate for ``cert_type`` in place and tell the subscribers."""
        with self._lock:
            self.certs[cert_type] = self.ca.issue(cert_type)
        sent = self._subscribers(cert_type).push(self._cert_info(cert_type))
        log.info("IAM sim: renewed %s certificate (serial %x), told %d subscribers",
                 cert_type, self.certs[cert_type].serial, sent)
        return self.certs[cert_type]

    def set_node_info(self, info: iam_pb2.NodeInfo) -> None:
        self.node_info = info
        self._node_subscribers.push(info)

    def start(self) -> "SimulatedIAM":
        public = grpc.server(futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="iamsim-pub"),
                             options=SERVER_OPTIONS)
        public.add_generic_rpc_handlers([
            self._handler(rpc.PUBLIC_NODE, {"GetCurrentNodeInfo": self._get_node_info,
                                            "SubscribeCurrentNodeChanged": self._node_changed}),
            self._handler(rpc.PUBLIC_CERT, {"GetCert": self._get_cert, "SubscribeCertChanged": self._cert_changed}),
        ])
        # Started again after a stop, it listens where it did before (tests: "IAM is back").
        public_listen = f"127.0.0.1:{self.public_port}" if self.public_port else self._public_listen
        protected_listen = f"127.0.0.1:{self.protected_port}" if self.protected_port else self._protected_listen
        self.public_port = public.add_secure_port(
            public_listen, self.ca.server_credentials(self._server_cert, require_client_auth=False))
        protected = grpc.server(futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="iamsim-prot"),
                                options=SERVER_OPTIONS)
        protected.add_generic_rpc_handlers([
            self._handler(rpc.PERMISSIONS, {"RegisterInstance": self._register, "UnregisterInstance": self._unregister}),
        ])
        self.protected_port = protected.add_secure_port(
            protected_listen, self.ca.server_credentials(self._server_cert, require_client_auth=True))
        public.start()
        protected.start()
        self._servers = [public, protected]
        return self

    def stop(self, grace: Optional[float] = 0) -> None:
        for subscribers in [self._node_subscribers, *self._cert_subscribers.values()]:
            subscribers.push(None)
        for server in self._servers:
            server.stop(grace).wait(timeout=10)
        self._servers = []

    # --- handlers

    @staticmethod
    def _handler(service: str, implementations: Dict[str, Callable[..., Any]]) -> grpc.GenericRpcHandler:
        handlers = {}
        for name, method in rpc.service_methods(service).items():
            if name not in implementations:
                continue  # not served: gRPC answers UNIMPLEMENTED, as an IAM without it would
            make = grpc.unary_stream_rpc_method_handler if method.server_streaming else grpc.unary_unary_rpc_method_handler
            handlers[name] = make(implementations[name], request_deserializer=method.request.FromString,
                                  response_serializer=method.response.SerializeToString)
        return grpc.method_handlers_generic_handler(f"{rpc.PACKAGE}.{service}", handlers)

    def _subscribers(self, cert_type: str) -> _Subscribers:
        with self._lock:
            return self._cert_subscribers.setdefault(cert_type, _Subscribers())

    def _cert_info(self, cert_type: str) -> iam_pb2.CertInfo:
        issued = self.certs[cert_type]
        return iam_pb2.CertInfo(
            type=cert_type, cert_url=file_url(issued.cert),
            key_url=self.key_url_override.get(cert_type, file_url(issued.key)),
            serial=issued.serial_bytes, issuer=self.ca.subject_der)

    def _get_node_info(self, _request: empty_pb2.Empty, _context: grpc.ServicerContext) -> iam_pb2.NodeInfo:
        return self.node_info

    def _get_cert(self, request: iam_pb2.GetCertRequest, context: grpc.ServicerContext) -> iam_pb2.CertInfo:
        if request.type not in self.certs:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no certificate of type {request.type!r}")
        return self._cert_info(request.type)

    @staticmethod
    def _stream(subscribers: _Subscribers, context: grpc.ServicerContext) -> Iterator[Any]:
        q = subscribers.add()
        context.add_callback(lambda: q.put(None))
        try:
            while True:
                message = q.get()
                if message is None or not context.is_active():
                    return
                yield message
        finally:
            subscribers.remove(q)

    def _node_changed(self, _request: empty_pb2.Empty, context: grpc.ServicerContext) -> Iterator[Any]:
        return self._stream(self._node_subscribers, context)

    def _cert_changed(self, request: iam_pb2.SubscribeCertChangedRequest,
                      context: grpc.ServicerContext) -> Iterator[Any]:
        return self._stream(self._subscribers(request.type), context)

    def _register(self, request: iam_pb2.RegisterInstanceRequest,
                  context: grpc.ServicerContext) -> iam_pb2.RegisterInstanceResponse:
        if self.register_error is not None:
            context.abort(*self.register_error)
        secret = secrets.token_hex(16)
        permissions = {name: dict(value.permissions) for name, value in request.permissions.items()}
        self.registered[_key(request.instance)] = (secret, permissions)
        log.info("IAM sim: registered %s with %s", _key(request.instance), permissions)
        return iam_pb2.RegisterInstanceResponse(secret=secret)

    def _unregister(self, request: iam_pb2.UnregisterInstanceRequest,
                    _context: grpc.ServicerContext) -> empty_pb2.Empty:
        key = _key(request.instance)
        self.registered.pop(key, None)
        self.unregistered.append(key)
        log.info("IAM sim: unregistered %s", key)
        return empty_pb2.Empty()

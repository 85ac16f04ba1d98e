"""The gRPC adapter of the IAM port: public server over TLS (``caCert``), protected over mTLS.

Each call makes what it needs fresh: the protected channel is built per call with the
certificate IAM names at that moment, so a renewal applies to the next RegisterInstance without
bookkeeping. Change streams run on a thread each and reopen with the agent's reconnect backoff
(statemachine/backoff.py) while IAM is away.
"""

from __future__ import annotations

import logging
import random
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Tuple

import grpc
from google.protobuf import empty_pb2

from aos_sm.proto.common.v2 import common_pb2
from aos_sm.proto.iamanager.v6 import iamanager_pb2 as iam_pb2
from aos_sm.statemachine.backoff import backoff_delays

from ..errors import RuntimeFailure
from . import rpc
from .certurl import certificate_files
from .port import IamCertInfo, IamNodeInfo, IamUnavailable, Permissions, Subscription

log = logging.getLogger(__name__)


def node_info_from_proto(message: iam_pb2.NodeInfo) -> IamNodeInfo:
    arch = message.cpus[0].arch_info if message.cpus else None
    return IamNodeInfo(
        node_id=message.node_id, node_type=message.node_type, max_dmips=message.max_dmips,
        total_ram=message.total_ram, os_name=message.os_info.os, os_version=message.os_info.version,
        architecture=arch.architecture if arch is not None else "",
        architecture_variant=arch.variant if arch is not None else "",
        attrs=tuple((attr.name, attr.value) for attr in message.attrs))


def cert_info_from_proto(message: iam_pb2.CertInfo) -> IamCertInfo:
    return IamCertInfo(message.type, message.cert_url, message.key_url, bytes(message.serial), bytes(message.issuer))


def _status(err: grpc.RpcError) -> Tuple[str, str]:
    if isinstance(err, grpc.Call):
        code = err.code()
        return (code.name if code is not None else "UNKNOWN"), (err.details() or "")
    return "UNKNOWN", str(err)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise RuntimeFailure.from_os_error(err, f"cannot read {what}") from err


class GrpcIamClient:
    """``public_url`` and ``protected_url`` are ``host:port``; ``ca_cert`` verifies IAM (None:
    plaintext, development only); ``cert_type`` is ``certStorage``, the certificate the SM
    presents to the protected server."""

    def __init__(self, public_url: str, *, ca_cert: Optional[Path], cert_type: str,
                 protected_url: Optional[str] = None, reconnect_first_wait: float = 0.5,
                 reconnect_cap: float = 10.0) -> None:
        self.public_url = public_url
        self.protected_url = protected_url
        self._ca = ca_cert
        self._cert_type = cert_type
        self._first_wait = reconnect_first_wait
        self._cap = reconnect_cap
        self._lock = threading.Lock()
        self._channel: Optional[grpc.Channel] = None

    # --- channels

    def _root(self) -> Optional[bytes]:
        return _read(self._ca, "caCert") if self._ca is not None else None

    def _public(self) -> grpc.Channel:
        with self._lock:
            if self._channel is None:
                if self._ca is None:
                    self._channel = grpc.insecure_channel(self.public_url)
                else:
                    self._channel = grpc.secure_channel(
                        self.public_url, grpc.ssl_channel_credentials(root_certificates=self._root()))
            return self._channel

    def _protected(self, timeout: float) -> grpc.Channel:
        if not self.protected_url:
            raise IamUnavailable("FAILED_PRECONDITION", "iamProtectedServerURL is not configured")
        if self._ca is None:
            return grpc.insecure_channel(self.protected_url)
        cert, key = certificate_files(self.get_cert(self._cert_type, timeout))
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self._root(), private_key=_read(key, "IAM's key file"),
            certificate_chain=_read(cert, "IAM's certificate file"))
        return grpc.secure_channel(self.protected_url, credentials)

    def _unary(self, channel: grpc.Channel, method: rpc.Method, request: Any, timeout: float) -> Any:
        call = channel.unary_unary(method.path, request_serializer=method.request.SerializeToString,
                                   response_deserializer=method.response.FromString)
        try:
            return call(request, timeout=timeout, wait_for_ready=False)
        except grpc.RpcError as err:
            code, details = _status(err)
            # Cause first, the call last: CM keeps 64 characters of an instance's error message.
            raise IamUnavailable(code, f"{code}: {details} (IAM {method.name})") from err

    # --- the port

    def get_node_info(self, timeout: float) -> IamNodeInfo:
        method = rpc.method(rpc.PUBLIC_NODE, "GetCurrentNodeInfo")
        return node_info_from_proto(self._unary(self._public(), method, empty_pb2.Empty(), timeout))

    def get_cert(self, cert_type: str, timeout: float) -> IamCertInfo:
        method = rpc.method(rpc.PUBLIC_CERT, "GetCert")
        reply = self._unary(self._public(), method, iam_pb2.GetCertRequest(type=cert_type), timeout)
        return cert_info_from_proto(reply)

    def subscribe_node_changed(self, on_change: Callable[[IamNodeInfo], None]) -> Subscription:
        method = rpc.method(rpc.PUBLIC_NODE, "SubscribeCurrentNodeChanged")
        return self._subscribe(method, empty_pb2.Empty(), lambda m: on_change(node_info_from_proto(m)))

    def subscribe_cert_changed(self, cert_type: str, on_change: Callable[[IamCertInfo], None]) -> Subscription:
        method = rpc.method(rpc.PUBLIC_CERT, "SubscribeCertChanged")
        request = iam_pb2.SubscribeCertChangedRequest(type=cert_type)
        return self._subscribe(method, request, lambda m: on_change(cert_info_from_proto(m)))

    def register_instance(self, instance: common_pb2.InstanceIdent, permissions: Permissions,
                          timeout: float) -> str:
        method = rpc.method(rpc.PERMISSIONS, "RegisterInstance")
        request = iam_pb2.RegisterInstanceRequest(instance=instance)
        for server, functions in permissions.items():
            request.permissions[server].permissions.update(dict(functions))
        channel = self._protected(timeout)
        try:
            return str(self._unary(channel, method, request, timeout).secret)
        finally:
            channel.close()

    def unregister_instance(self, instance: common_pb2.InstanceIdent, timeout: float) -> None:
        method = rpc.method(rpc.PERMISSIONS, "UnregisterInstance")
        channel = self._protected(timeout)
        try:
            self._unary(channel, method, iam_pb2.UnregisterInstanceRequest(instance=instance), timeout)
        finally:
            channel.close()

    def close(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._channel.close()
                self._channel = None

    # --- change streams

    def _subscribe(self, method: rpc.Method, request: Any, deliver: Callable[[Any], None]) -> Subscription:
        stop = threading.Event()
        active: List[Any] = []

        def cancel() -> None:
            stop.set()
            for call in list(active):
                call.cancel()

        def run() -> None:
            delays: Iterator[float] = backoff_delays(self._first_wait, self._cap, random.random)
            while not stop.is_set():
                call = self._public().unary_stream(
                    method.path, request_serializer=method.request.SerializeToString,
                    response_deserializer=method.response.FromString)(request)
                active[:] = [call]
                try:
                    for message in call:
                        delays = backoff_delays(self._first_wait, self._cap, random.random)
                        try:
                            deliver(message)
                        except Exception:  # a listener bug must not end the subscription
                            log.exception("handling IAM %s failed", method.name)
                    reason = "IAM ended the stream"
                except grpc.RpcError as err:
                    reason = " ".join(_status(err))
                if stop.is_set():
                    return
                wait = next(delays)
                log.warning("IAM %s: %s; reopening in %.1fs", method.name, reason, wait)
                stop.wait(wait)

        threading.Thread(target=run, name=f"iam-{method.name}", daemon=True).start()
        return Subscription(cancel)

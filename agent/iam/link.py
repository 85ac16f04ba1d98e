"""The running agent's ties to IAM: the client certificate for each CM connect, and IAM's change
streams.

A renewal IAM announces (``SubscribeCertChanged``) is fed to the gateway as the same
``CertificatesChanged`` event the file watcher feeds (agent/certwatch.py): the session closes and
the next connect asks IAM for the certificate again, one reconnect path for both modes. A node
info change is logged with what changed: the identity is read once per agent start, as SMInfo's
capacity is (the monitor's DMIPS scale cannot change under running instances).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from ..transport import TransportFailure
from .certurl import certificate_files
from .port import IamCertInfo, IamClient, IamNodeInfo, IamUnavailable, Subscription

log = logging.getLogger(__name__)

CALL_TIMEOUT = 5.0


class IamLink:
    def __init__(self, client: IamClient, cert_type: str, node_info: IamNodeInfo,
                 on_certificate_changed: Callable[[], None]) -> None:
        self.client = client
        self.cert_type = cert_type
        self.node_info = node_info
        self._on_certificate_changed = on_certificate_changed
        self._subscriptions: List[Subscription] = []
        self.last_cert: Optional[IamCertInfo] = None

    def client_certificate(self) -> Tuple[Path, Path]:
        """(certificate, key) files IAM names now: GrpcTransport's ``client_certificate``. IAM
        unreachable is a transport failure (retried at the reconnect pace); a ``pkcs11:`` key is
        an ``UnusableCertUrl`` (a configuration problem, said once a minute)."""
        try:
            info = self.client.get_cert(self.cert_type, CALL_TIMEOUT)
        except IamUnavailable as err:
            # IAM away or slow: retried at the reconnect pace. Anything else (no such
            # certStorage type, refused) is a configuration problem, said once a minute.
            code = err.code if err.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED") else "FAILED_PRECONDITION"
            raise TransportFailure(code, f"no client certificate from IAM: {err}") from err
        self.last_cert = info
        return certificate_files(info)

    def start(self) -> None:
        self._subscriptions = [
            self.client.subscribe_cert_changed(self.cert_type, self._certificate_changed),
            self.client.subscribe_node_changed(self._node_changed),
        ]

    def stop(self) -> None:
        for subscription in self._subscriptions:
            subscription.cancel()
        self._subscriptions = []
        self.client.close()

    def _certificate_changed(self, info: IamCertInfo) -> None:
        log.info("IAM renewed the %s certificate (serial %s): reconnecting to CM with it",
                 info.cert_type, info.serial.hex() or "?")
        self._on_certificate_changed()

    def _node_changed(self, info: IamNodeInfo) -> None:
        before = self.node_info
        changed = [name for name in ("node_id", "max_dmips", "total_ram", "os_name", "os_version",
                                     "architecture", "architecture_variant")
                   if getattr(before, name) != getattr(info, name)]
        if changed:
            log.warning("IAM's node info changed (%s); the agent applies it at its next start",
                        ", ".join(f"{name} {getattr(before, name)!r} -> {getattr(info, name)!r}" for name in changed))

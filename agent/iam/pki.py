"""A small test CA for the fake IAM: a CA, server certificates for IAM and CM, client
certificates IAM hands out by type. Made with ``cryptography`` (already the agent's dependency
for its certificate checks), P-256 keys, 30 days of validity (past the agent's 7-day expiry warning), random serials.

Files are replaced atomically, the key before the certificate, as IAM's own renewal does: a
reader that sees the new certificate finds its key already in place.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Sequence


VALIDITY = datetime.timedelta(days=30)


@dataclass(frozen=True)
class IssuedCert:
    cert: Path
    key: Path
    serial: int

    @property
    def serial_bytes(self) -> bytes:
        return self.serial.to_bytes((self.serial.bit_length() + 7) // 8 or 1, "big")


def _write(path: Path, data: bytes, mode: int) -> None:
    staged = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(staged, path)


class TestCA:
    """A CA under ``directory`` (created): ``ca.pem`` and certificates issued into it."""

    __test__ = False  # not a pytest class

    def __init__(self, directory: Path, name: str = "aos-sm test CA") -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        self._cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(self._key, hashes.SHA256()))
        self.cert_path = self.directory / "ca.pem"
        _write(self.cert_path, self._pem(self._cert), 0o644)

    @property
    def subject_der(self) -> bytes:
        """The CA's subject as DER: CertInfo.issuer of the certificates it issues."""
        return bytes(self._cert.subject.public_bytes())

    @staticmethod
    def _pem(cert: Any) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return bytes(cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, *, server: bool = False, hosts: Sequence[str] = ("127.0.0.1", "localhost"),
              common_name: str = "") -> IssuedCert:
        """``<name>.pem`` / ``<name>.key``, replaced atomically (key first) when they exist."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        serial = int.from_bytes(secrets.token_bytes(16), "big") >> 1 or 1
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name or name)]))
            .issuer_name(self._cert.subject).public_key(key.public_key()).serial_number(serial)
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        if server:
            names: List[Any] = []
            for host in hosts:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    names.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        issued = IssuedCert(self.directory / f"{name}.pem", self.directory / f"{name}.key", serial)
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        _write(issued.key, key_pem, 0o600)
        _write(issued.cert, self._pem(cert), 0o644)
        return issued

    def server_credentials(self, issued: IssuedCert, *, require_client_auth: bool) -> Any:
        import grpc

        return grpc.ssl_server_credentials(
            [(issued.key.read_bytes(), issued.cert.read_bytes())],
            root_certificates=self.cert_path.read_bytes(), require_client_auth=require_client_auth)

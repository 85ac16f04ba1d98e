"""Test PKI made with the real ``openssl`` CLI: a CA, CM server and SM client certificates.

Why the CLI and not a Python crypto library: it is what an operator uses to make node
certificates, it is on every Debian machine, and the tests then need no extra dependency. Keys
are P-256 (fast to generate); certificates live for one day.

``other_ca`` / ``other_server`` are an unrelated CA and a server certificate it signed, with the
same names as the real server: a CM presenting them is "a CM the SM cannot verify".
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import grpc

SERVER_SAN = "IP:127.0.0.1,DNS:localhost"
_KEY_ARGS = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


class TLSMaterialError(RuntimeError):
    """openssl failed; the message carries its stderr."""


def openssl_path() -> Optional[str]:
    return shutil.which("openssl")


def _openssl(*args: str, cwd: Path) -> None:
    binary = openssl_path()
    if binary is None:
        raise TLSMaterialError("the openssl CLI is not installed")
    try:
        subprocess.run(
            [binary, *args], cwd=cwd, check=True, capture_output=True, text=True, timeout=60
        )
    except subprocess.CalledProcessError as err:
        raise TLSMaterialError(f"openssl {' '.join(args)}: {err.stderr.strip()}") from err


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path

    def cert_pem(self) -> bytes:
        return self.cert.read_bytes()

    def key_pem(self) -> bytes:
        return self.key.read_bytes()


def der_from_pem(pem: bytes) -> bytes:
    """The DER bytes of the first certificate in ``pem``: compare certs regardless of layout."""
    lines = pem.decode("ascii").strip().splitlines()
    start = lines.index("-----BEGIN CERTIFICATE-----")
    end = lines.index("-----END CERTIFICATE-----", start)
    return base64.b64decode("".join(lines[start + 1 : end]))


def _make_ca(directory: Path, name: str, common_name: str) -> CertPair:
    pair = CertPair(directory / f"{name}.pem", directory / f"{name}.key")
    _openssl(
        "req", "-x509", *_KEY_ARGS, "-keyout", pair.key.name, "-out", pair.cert.name,
        "-days", "1", "-sha256", "-subj", f"/CN={common_name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    return pair


def _issue(directory: Path, ca: CertPair, out: CertPair, common_name: str, extensions: str) -> None:
    """Key + CSR + certificate signed by ``ca``, written to ``out``'s paths (same directory)."""
    stem = out.cert.stem
    csr, ext = directory / f"{stem}.csr", directory / f"{stem}.ext"
    ext.write_text(extensions)
    _openssl(
        "req", "-new", *_KEY_ARGS, "-keyout", str(out.key), "-out", str(csr),
        "-subj", f"/CN={common_name}",
        cwd=directory,
    )  # fmt: skip
    # An explicit random serial: reissued certificates must differ even within one second.
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
        "-set_serial", f"0x{secrets.token_hex(16)}", "-days", "1", "-sha256",
        "-extfile", str(ext), "-out", str(out.cert),
        cwd=directory,
    )  # fmt: skip
    csr.unlink()
    ext.unlink()


def _server_extensions() -> str:
    return (
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        f"subjectAltName={SERVER_SAN}\n"
    )


def _client_extensions() -> str:
    return (
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=clientAuth\n"
    )


@dataclass
class TLSMaterial:
    directory: Path
    ca: CertPair
    server: CertPair
    client: CertPair
    client_common_name: str
    other_ca: CertPair
    other_server: CertPair

    def server_credentials(
        self, *, require_client_auth: bool = True, untrusted: bool = False
    ) -> grpc.ServerCredentials:
        """CM credentials: the trusted server cert, or (``untrusted``) the other CA's one.

        Client certificates are verified against ``ca`` whenever the client sends one; with
        ``require_client_auth`` a client without one is refused during the handshake.
        """
        server = self.other_server if untrusted else self.server
        return grpc.ssl_server_credentials(
            [(server.key_pem(), server.cert_pem())],
            root_certificates=self.ca.cert_pem(),
            require_client_auth=require_client_auth,
        )

    def channel_credentials(self, *, with_client_cert: bool = True) -> grpc.ChannelCredentials:
        """What an SM would use: trust ``ca``, present the client cert (mTLS) or nothing (TLS)."""
        if not with_client_cert:
            return grpc.ssl_channel_credentials(root_certificates=self.ca.cert_pem())
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.cert_pem(),
            private_key=self.client.key_pem(),
            certificate_chain=self.client.cert_pem(),
        )

    def reissue_client_cert(self, common_name: Optional[str] = None) -> bytes:
        """Rotate the client key and certificate in place, each by an atomic ``os.replace``.

        The key is replaced first and the certificate last, so a watcher that reacts to the
        certificate changing finds the matching key already there. Returns the new cert PEM.
        """
        name = common_name if common_name is not None else self.client_common_name
        staged = CertPair(self.directory / "client.next.pem", self.directory / "client.next.key")
        _issue(self.directory, self.ca, staged, name, _client_extensions())
        os.replace(staged.key, self.client.key)
        os.replace(staged.cert, self.client.cert)
        self.client_common_name = name
        return self.client.cert_pem()


def make_tls_material(directory: Path, client_common_name: str = "node0") -> TLSMaterial:
    """A fresh PKI under ``directory`` (created if needed)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _make_ca(directory, "ca", "aos-sm test CA")
    server = CertPair(directory / "server.pem", directory / "server.key")
    _issue(directory, ca, server, "localhost", _server_extensions())
    client = CertPair(directory / "client.pem", directory / "client.key")
    _issue(directory, ca, client, client_common_name, _client_extensions())
    other_ca = _make_ca(directory, "other-ca", "unrelated test CA")
    other_server = CertPair(directory / "other-server.pem", directory / "other-server.key")
    _issue(directory, other_ca, other_server, "localhost", _server_extensions())
    return TLSMaterial(directory, ca, server, client, client_common_name, other_ca, other_server)

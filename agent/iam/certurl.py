"""IAM's certificate URLs as files the agent can hand to grpcio.

IAM answers ``GetCert`` with URLs: ``file:///path`` for a PEM file, ``pkcs11:...`` (RFC 7512) for
an object in a token. grpcio's TLS (BoringSSL) takes the key as PEM bytes and has no engine or
provider hook, so it cannot sign with a key that stays in a token: such a URL is refused with one
line naming the certificate type, never a crash (IAM.md "What we decide").
"""

from __future__ import annotations

from pathlib import Path
from typing import Tuple
from urllib.parse import unquote, urlsplit

from ..errors import NotSupported
from .port import IamCertInfo


class UnusableCertUrl(NotSupported):
    """A certificate or key URL the agent cannot use; the message is the one line to log."""


def file_path(url: str, what: str, cert_type: str) -> Path:
    """The local path of a ``file://`` URL (``file:///p`` or ``file:/p``)."""
    if url.lower().startswith("pkcs11:"):
        raise UnusableCertUrl(
            f"IAM certificate {cert_type!r}: the {what} is a PKCS#11 object ({url[:48]}); grpcio cannot "
            f"sign with a PKCS#11 key: have IAM keep the {cert_type!r} {what} in a file (file:// URL)")
    parts = urlsplit(url)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
        raise UnusableCertUrl(f"IAM certificate {cert_type!r}: {what} URL {url[:64]!r} is not file:///path")
    return Path(unquote(parts.path))


def certificate_files(info: IamCertInfo) -> Tuple[Path, Path]:
    """(certificate, key) paths of IAM's answer; the key is checked first, as it is the part a
    PKCS#11 setup keeps in the token."""
    key = file_path(info.key_url, "key", info.cert_type)
    return file_path(info.cert_url, "certificate", info.cert_type), key


def file_url(path: Path) -> str:
    return Path(path).resolve().as_uri()

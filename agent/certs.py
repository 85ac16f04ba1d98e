"""The agent's own TLS credentials: what is wrong with them, said with the file that is wrong.

Theory of operation
-------------------
A TLS handshake that fails says little: with an expired client certificate the agent only saw
"CM not ready" while CM refused it (issue 12). So the files are checked by themselves, at
start and before each connect:

- :func:`check_credentials` is pure: the bytes and mode of ``caCert``, ``certFile`` and
  ``keyFile`` (read by :func:`read_credentials`, the thin reader) and the time ``now`` in,
  one-line :class:`CertProblem` s out, each naming the config key and the file: unreadable, not
  PEM, expired, not yet valid, the key not matching the certificate, the certificate not issued
  by ``caCert``; a key file readable by others is a warning.
- :func:`expiring_soon` names the certificates that end within :data:`EXPIRY_WARNING` (7 days):
  the agent sends each as a CoreAlert once registered (:class:`ExpiryAlerts`).
- :class:`ProblemLog` logs each problem at start and then at most once a minute while it lasts,
  so a node that retries every few seconds does not flood its log.
- :func:`require_credential_files` refuses to start (exit 2, ``ConfigError``) when ``caCert``
  cannot be read or holds no certificate (a CA does not appear by retrying, unlike a client
  certificate that IAM may still be provisioning), or when ``certFile``/``keyFile`` name a
  directory.

X.509 parsing uses ``cryptography`` (Debian bookworm: python3-cryptography 38); only APIs that
38 already has are used, with the newer spellings preferred where they exist. It is imported
where a check runs: a plaintext agent never pays its import time (tens of ms at start).
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

from .config import AgentConfig
from .errors import ConfigError

if TYPE_CHECKING:
    from cryptography import x509

log = logging.getLogger(__name__)

EXPIRY_WARNING = datetime.timedelta(days=7)
LOG_INTERVAL = 60.0  # seconds between two log lines of one persisting problem (issue 12)
ALERT_INTERVAL = 3600.0  # seconds between two CoreAlerts of one expiring certificate

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\s.*?-----END CERTIFICATE-----", re.DOTALL)


@dataclass(frozen=True)
class CredentialFile:
    """One credential file as read: its bytes, or why it could not be read; its mode bits."""

    key: str  # the config key: caCert, certFile or keyFile
    path: Path
    data: Optional[bytes] = None
    read_error: Optional[str] = None
    mode: Optional[int] = None


@dataclass(frozen=True)
class CertProblem:
    key: str
    path: Path
    reason: str
    warning: bool = False

    def __str__(self) -> str:
        return f"{self.key} {self.path}: {self.reason}"


# --------------------------------------------------------------------------------------------
# Reading (the only I/O)
# --------------------------------------------------------------------------------------------


def read_credential_file(key: str, path: Path) -> CredentialFile:
    try:
        with open(path, "rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            data = handle.read(1 << 20)  # certificates are a few KiB; a bound against a wrong path
    except OSError as err:
        return CredentialFile(key, path, read_error=f"cannot read: {err.strerror or err}")
    return CredentialFile(key, path, data=data, mode=stat.S_IMODE(mode))


def credential_paths(config: AgentConfig) -> List[Tuple[str, Path]]:
    """The files the configured ``tlsMode`` uses, by config key."""
    if config.tls_mode == "plaintext":
        return []
    named = [("caCert", config.ca_cert)]
    if config.tls_mode == "mtls":
        named += [("certFile", config.cert_file), ("keyFile", config.key_file)]
    return [(key, path) for key, path in named if path is not None]


def read_credentials(config: AgentConfig) -> List[CredentialFile]:
    return [read_credential_file(key, path) for key, path in credential_paths(config)]


# --------------------------------------------------------------------------------------------
# Checks (pure)
# --------------------------------------------------------------------------------------------


def _utc(value: datetime.datetime) -> datetime.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=datetime.timezone.utc)


def not_valid_before(cert: x509.Certificate) -> datetime.datetime:
    # cryptography 42+ has the aware ``*_utc`` and deprecates the naive (UTC) ones 38 has.
    value = getattr(cert, "not_valid_before_utc", None)
    return _utc(value if value is not None else cert.not_valid_before)


def not_valid_after(cert: x509.Certificate) -> datetime.datetime:
    value = getattr(cert, "not_valid_after_utc", None)
    return _utc(value if value is not None else cert.not_valid_after)


def _when(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def parse_certificates(data: bytes) -> List[x509.Certificate]:
    """Every PEM certificate in ``data``, in order; ValueError when one does not parse."""
    from cryptography import x509

    return [x509.load_pem_x509_certificate(block) for block in _PEM_CERT.findall(data)]


def _load_certificates(file: CredentialFile, problems: List[CertProblem]) -> List[x509.Certificate]:
    if file.data is None:
        problems.append(CertProblem(file.key, file.path, file.read_error or "cannot read"))
        return []
    try:
        certs = parse_certificates(file.data)
    except ValueError as err:
        problems.append(CertProblem(file.key, file.path, f"not a valid PEM certificate ({err})"))
        return []
    if not certs:
        problems.append(CertProblem(file.key, file.path, "no PEM certificate in it"))
    return certs


def _check_validity(file: CredentialFile, cert: x509.Certificate, now: datetime.datetime,
                    problems: List[CertProblem]) -> None:
    if now > not_valid_after(cert):
        problems.append(CertProblem(file.key, file.path, f"expired on {_when(not_valid_after(cert))}"))
    elif now < not_valid_before(cert):
        problems.append(CertProblem(file.key, file.path,
                                    f"not valid before {_when(not_valid_before(cert))} (check the clock)"))


def _public_der(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


def signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True when ``issuer``'s key verifies ``cert``'s signature (or the algorithm is one this
    check does not know: no mismatch is claimed that could be wrong)."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa

    if cert.issuer != issuer.subject:
        return False
    key = issuer.public_key()
    algorithm = cert.signature_hash_algorithm
    try:
        if isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
            if cert.signature_algorithm_oid == x509.oid.SignatureAlgorithmOID.RSASSA_PSS:
                return True
            key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
            key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algorithm))
        elif isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
            key.verify(cert.signature, cert.tbs_certificate_bytes)
    except InvalidSignature:
        return False
    return True


def _issued_by_any(cert: x509.Certificate, chain: Sequence[x509.Certificate],
                   anchors: Sequence[x509.Certificate]) -> bool:
    """``cert`` leads to one of ``anchors`` through at most a few of ``chain``'s certificates."""
    current = cert
    for _ in range(4):
        if any(signed_by(current, anchor) for anchor in anchors):
            return True
        parent = next((c for c in chain if c is not current and signed_by(current, c)), None)
        if parent is None:
            return False
        current = parent
    return False


def check_credentials(files: Sequence[CredentialFile], now: datetime.datetime) -> List[CertProblem]:
    """Every problem with the agent's own credentials, errors first in file order, then warnings."""
    problems: List[CertProblem] = []
    by_key: Dict[str, CredentialFile] = {file.key: file for file in files}
    certs_of: Dict[str, List[x509.Certificate]] = {}
    for key in ("caCert", "certFile"):
        if key in by_key:
            file = by_key[key]
            certs_of[key] = _load_certificates(file, problems)
            if certs_of[key]:
                _check_validity(file, certs_of[key][0], now, problems)
    leaf = certs_of.get("certFile", [None])[0] if certs_of.get("certFile") else None
    key_file = by_key.get("keyFile")
    warnings: List[CertProblem] = []
    if key_file is not None:
        private_key = _load_private_key(key_file, problems)
        if private_key is not None and leaf is not None and \
                _public_der(private_key.public_key()) != _public_der(leaf.public_key()):
            problems.append(CertProblem(key_file.key, key_file.path,
                                        f"does not match certFile {by_key['certFile'].path}"))
        if key_file.mode is not None and key_file.mode & stat.S_IROTH:
            warnings.append(CertProblem(key_file.key, key_file.path,
                                        f"readable by others (mode {key_file.mode:04o}): chmod o-r", warning=True))
    anchors = certs_of.get("caCert", [])
    if leaf is not None and anchors and not _issued_by_any(leaf, certs_of["certFile"][1:], anchors):
        file = by_key["certFile"]
        problems.append(CertProblem(file.key, file.path, f"not issued by caCert {by_key['caCert'].path}"))
    return problems + warnings


def _load_private_key(file: CredentialFile, problems: List[CertProblem]) -> Optional[Any]:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    if file.data is None:
        problems.append(CertProblem(file.key, file.path, file.read_error or "cannot read"))
        return None
    try:
        return serialization.load_pem_private_key(file.data, password=None)
    except TypeError:
        problems.append(CertProblem(file.key, file.path, "encrypted; the agent needs it without a password"))
    except (ValueError, UnsupportedAlgorithm) as err:
        problems.append(CertProblem(file.key, file.path, f"not a usable PEM private key ({_first_line(err)})"))
    return None


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0][:80] if text else type(err).__name__


def expiring_soon(files: Sequence[CredentialFile], now: datetime.datetime,
                  within: datetime.timedelta = EXPIRY_WARNING) -> List[str]:
    """One line per certificate (caCert, certFile) still valid but ending within ``within``."""
    soon = []
    for file in files:
        if file.key not in ("caCert", "certFile") or file.data is None:
            continue
        try:
            certs = parse_certificates(file.data)
        except ValueError:
            continue
        if not certs:
            continue
        end = not_valid_after(certs[0])
        left = end - now
        if datetime.timedelta(0) <= left <= within:
            days = left.total_seconds() / 86400
            span = f"{days:.0f} days" if days >= 1.5 else f"{left.total_seconds() / 3600:.0f} hours"
            # Cause first: CM keeps 64 characters of a CoreAlert's message.
            soon.append(f"{file.key} expires in {span} ({_when(end)}): {file.path}")
    return soon


# --------------------------------------------------------------------------------------------
# Reporting, with injected clocks
# --------------------------------------------------------------------------------------------


def _wall_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class ProblemLog:
    """Logs each problem line the first time and then at most once per ``interval`` seconds."""

    def __init__(self, interval: float = LOG_INTERVAL,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._monotonic = monotonic
        self._last: Dict[str, float] = {}
        self._lock = threading.Lock()

    def due(self, line: str) -> bool:
        now = self._monotonic()
        with self._lock:
            last = self._last.get(line)
            if last is not None and now - last < self._interval:
                return False
            self._last[line] = now
            return True

    def report(self, problems: Sequence[CertProblem]) -> None:
        for problem in problems:
            if self.due(str(problem)):
                if problem.warning:
                    log.warning("TLS credentials: %s", problem)
                else:
                    log.error("TLS credentials: %s", problem)


# Log rate limiting is about what one process writes to its log, so one limiter serves every
# caller in the process (keyed by the line, which names the file).
_PROCESS_LOG = ProblemLog()


def check_before_connect(config: AgentConfig, now: Optional[datetime.datetime] = None,
                         problem_log: Optional[ProblemLog] = None) -> List[CertProblem]:
    """Check the configured credentials and log what is wrong (rate-limited); never raises, so
    a connect still happens and the handshake's own error follows."""
    try:
        problems = check_credentials(read_credentials(config), now or _wall_now())
    except Exception:  # a check must never be why the agent cannot connect
        log.exception("checking the TLS credentials failed")
        return []
    (problem_log or _PROCESS_LOG).report(problems)
    return problems


class ExpiryAlerts:
    """CoreAlert texts for certificates that end within 7 days, each at most once an hour."""

    def __init__(self, config: AgentConfig, *, now: Callable[[], datetime.datetime] = _wall_now,
                 monotonic: Callable[[], float] = time.monotonic, interval: float = ALERT_INTERVAL) -> None:
        self._config = config
        self._now = now
        self._limit = ProblemLog(interval, monotonic)

    def due(self) -> List[str]:
        try:
            soon = expiring_soon(read_credentials(self._config), self._now())
        except Exception:
            log.exception("checking certificate expiry failed")
            return []
        for line in soon:
            log.warning("TLS credentials: %s", line)
        return [line for line in soon if self._limit.due(line)]


def require_ca_cert(config: AgentConfig) -> None:
    """Raise ConfigError (the CLI exits 2) when the configured ``caCert`` cannot be read or holds
    no certificate, in a TLS mode where CM or IAM is verified with it: no retry makes a missing
    CA appear (issue 16: it used to be retried forever)."""
    if config.tls_mode == "plaintext" or config.ca_cert is None or not (config.cm_server_url or config.uses_iam):
        return
    file = read_credential_file("caCert", config.ca_cert)
    problems: List[CertProblem] = []
    _load_certificates(file, problems)
    if problems:
        raise ConfigError("caCert", f"{config.ca_cert}: {problems[0].reason}")


def require_credential_files(config: AgentConfig) -> None:
    """``require_ca_cert``, and ``certFile``/``keyFile`` that name a directory: a configuration
    error that no provisioning fixes. A missing or bad client certificate or key is not refused
    here: whoever provisions them (IAM writing the files) may still be at it, and a renewal
    replaces them while the agent runs; those are checked before each connect and retried."""
    require_ca_cert(config)
    if config.uses_iam or not config.cm_server_url:
        return  # with IAM the client certificate is IAM's, named on every connect
    for key, path in credential_paths(config):
        if key != "caCert" and path.is_dir():
            raise ConfigError(key, f"{path}: a directory, not a file")


class ExpiryWatch:
    """Re-checks the certificates every ``period`` seconds while the agent runs: a certificate
    that enters its last 7 days during a session that lasts weeks is a CoreAlert then, not at the
    next reconnect. It shares ``alerts`` (and so its once-an-hour limit) with registration, which
    checks on every connect; ``send`` gets each CoreAlert text (the outbox keeps it until a
    session is live)."""

    def __init__(self, alerts: ExpiryAlerts, send: Callable[[str], None], *, period: float = 600.0) -> None:
        self._alerts = alerts
        self._send = send
        self._period = period
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def tick(self) -> None:
        for line in self._alerts.due():
            self._send(f"certificate {line}")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sm-certexpiry", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            try:
                self.tick()
            except Exception:  # the next period tries again; a check never stops the agent
                log.exception("certificate expiry check failed")

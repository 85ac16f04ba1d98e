"""The agent's own certificate, key and CA: each fault gives its own one-line message naming the
file (issue 12), a certificate ending within 7 days is a CoreAlert once registered, and a
missing caCert stops the agent at start with exit code 2.

Certificates are generated here with ``cryptography`` (an agent dependency), which sets any
validity window directly: expired and not-yet-valid ones need no clock games.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from contract_cm import ContractCM

from agent_helpers import registered

from aos_sm.agent import certs
from aos_sm.agent.app import Agent
from aos_sm.agent.certs import (
    CredentialFile,
    ProblemLog,
    check_credentials,
    expiring_soon,
    read_credential_file,
    require_ca_cert,
)
from aos_sm.agent.config import AgentConfig
from aos_sm.agent.errors import ConfigError

NOW = datetime.datetime(2026, 11, 30, 12, 0, tzinfo=datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return _pem_key(self.key)


def make_ca(name: str = "Test CA", start: datetime.datetime = NOW - DAY,
            end: datetime.datetime = NOW + 365 * DAY) -> Issued:
    key = _key()
    cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return Issued(cert, key)


def issue(ca: Issued, name: str, *, start: datetime.datetime = NOW - DAY,
          end: datetime.datetime = NOW + 90 * DAY, server: bool = False) -> Issued:
    key = _key()
    builder = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(ca.cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost")]), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


@dataclass
class Files:
    ca: Path
    cert: Path
    key: Path

    def read(self) -> List[CredentialFile]:
        return [read_credential_file("caCert", self.ca), read_credential_file("certFile", self.cert),
                read_credential_file("keyFile", self.key)]


def write_files(directory: Path, ca: Issued, client: Issued, key_pem: Optional[bytes] = None) -> Files:
    directory.mkdir(parents=True, exist_ok=True)
    files = Files(directory / "ca.pem", directory / "client.pem", directory / "client.key")
    files.ca.write_bytes(ca.cert_pem)
    files.cert.write_bytes(client.cert_pem)
    files.key.write_bytes(key_pem if key_pem is not None else client.key_pem)
    files.key.chmod(0o600)
    return files


def lines(files: Files, now: datetime.datetime = NOW) -> List[str]:
    return [str(problem) for problem in check_credentials(files.read(), now)]


# --- each fault, its own line -----------------------------------------------------------------


def test_good_credentials_have_no_problem(tmp_path: Path) -> None:
    ca = make_ca()
    assert lines(write_files(tmp_path, ca, issue(ca, "node0"))) == []


def test_expired_certificate(tmp_path: Path) -> None:
    ca = make_ca()
    files = write_files(tmp_path, ca, issue(ca, "node0", start=NOW - 30 * DAY, end=NOW - DAY))
    assert lines(files) == [f"certFile {files.cert}: expired on 2026-11-29 12:00 UTC"]


def test_not_yet_valid_certificate(tmp_path: Path) -> None:
    ca = make_ca()
    files = write_files(tmp_path, ca, issue(ca, "node0", start=NOW + 2 * DAY))
    assert lines(files) == [f"certFile {files.cert}: not valid before 2026-12-02 12:00 UTC (check the clock)"]


def test_key_of_another_certificate(tmp_path: Path) -> None:
    ca = make_ca()
    files = write_files(tmp_path, ca, issue(ca, "node0"), key_pem=_pem_key(_key()))
    assert lines(files) == [f"keyFile {files.key}: does not match certFile {files.cert}"]


def test_unreadable_files(tmp_path: Path) -> None:
    ca = make_ca()
    files = write_files(tmp_path, ca, issue(ca, "node0"))
    files.key.unlink()
    files.cert.write_bytes(b"not a certificate\n")
    assert lines(files) == [f"certFile {files.cert}: no PEM certificate in it",
                            f"keyFile {files.key}: cannot read: No such file or directory"]


def test_unparseable_key_and_certificate(tmp_path: Path) -> None:
    ca = make_ca()
    files = write_files(tmp_path, ca, issue(ca, "node0"), key_pem=b"-----BEGIN PRIVATE KEY-----\nAAAA\n"
                                                                 b"-----END PRIVATE KEY-----\n")
    files.ca.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    problems = lines(files)
    assert len(problems) == 2
    assert problems[0].startswith(f"caCert {files.ca}: not a valid PEM certificate")
    assert problems[1].startswith(f"keyFile {files.key}: not a usable PEM private key")


def test_certificate_not_issued_by_the_ca(tmp_path: Path) -> None:
    files = write_files(tmp_path, make_ca("Unit CA"), issue(make_ca("Unit CA"), "node0"))
    # Same issuer name, another key: only the signature tells them apart.
    assert lines(files) == [f"certFile {files.cert}: not issued by caCert {files.ca}"]


def test_expired_ca(tmp_path: Path) -> None:
    ca = make_ca(start=NOW - 10 * DAY, end=NOW - 2 * DAY)
    files = write_files(tmp_path, ca, issue(ca, "node0"))
    assert lines(files) == [f"caCert {files.ca}: expired on 2026-11-28 12:00 UTC"]


def test_key_readable_by_others_is_a_warning(tmp_path: Path) -> None:
    ca = make_ca()
    files = write_files(tmp_path, ca, issue(ca, "node0"))
    files.key.chmod(0o644)
    (problem,) = check_credentials(files.read(), NOW)
    assert problem.warning
    assert str(problem) == f"keyFile {files.key}: readable by others (mode 0644): chmod o-r"


def test_an_intermediate_in_the_certificate_file_leads_to_the_ca(tmp_path: Path) -> None:
    root = make_ca("Root")
    intermediate = issue(root, "Intermediate")
    leaf = issue(intermediate, "node0")
    files = write_files(tmp_path, root, leaf)
    files.cert.write_bytes(leaf.cert_pem + intermediate.cert_pem)
    assert lines(files) == []


def test_expiry_within_seven_days_is_named_with_the_cause_first(tmp_path: Path) -> None:
    ca = make_ca()
    files = write_files(tmp_path, ca, issue(ca, "node0", end=NOW + 3 * DAY))
    assert expiring_soon(files.read(), NOW) == [f"certFile expires in 3 days (2026-12-03 12:00 UTC): {files.cert}"]
    assert expiring_soon(files.read(), NOW - 5 * DAY) == []


def test_a_persisting_problem_is_logged_at_most_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    clock = [0.0]
    problem_log = ProblemLog(60.0, lambda: clock[0])
    problem = certs.CertProblem("certFile", Path("/etc/aos/node.pem"), "expired on 2026-11-29 12:00 UTC")
    with caplog.at_level(logging.ERROR, logger="aos_sm.agent.certs"):
        for now in (0.0, 10.0, 59.0, 60.0, 61.0, 130.0):
            clock[0] = now
            problem_log.report([problem])
    assert [r.getMessage() for r in caplog.records] == [f"TLS credentials: {problem}"] * 3


# --- at start: a missing CA is a configuration error (exit 2) ----------------------------------


def test_a_missing_ca_stops_the_agent_at_start_naming_key_and_file(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-ca.pem"
    config = AgentConfig(node_id="n", cm_server_url="localhost:1", ca_cert=missing)
    with pytest.raises(ConfigError) as caught:
        require_ca_cert(config)
    assert str(caught.value) == f"caCert: {missing}: cannot read: No such file or directory"
    path = tmp_path / "sm.json"
    path.write_text(json.dumps({"cmServerURL": "localhost:1", "caCert": str(missing), "certFile": "/c",
                                "keyFile": "/k", "workingDir": str(tmp_path / "work")}))
    run = subprocess.run([sys.executable, "-m", "aos_sm.agent.cli", "run", "--config", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run.stderr
    assert f"caCert: {missing}: cannot read: No such file or directory" in run.stderr


# --- against the contract CM with mTLS ------------------------------------------------------


def _mtls_cm(factory: Callable[..., ContractCM], ca: Issued, server: Issued) -> ContractCM:
    credentials = grpc.ssl_server_credentials([(server.key_pem, server.cert_pem)], root_certificates=ca.cert_pem,
                                              require_client_auth=True)
    return factory(credentials=credentials)


def _mtls_keys(files: Files) -> dict:
    return {"tlsMode": "mtls", "caCert": str(files.ca), "certFile": str(files.cert), "keyFile": str(files.key)}


def test_a_certificate_ending_in_three_days_is_a_core_alert_once_registered(
    contract_cm_factory: Callable[..., ContractCM], start_agent: Callable[..., Agent], tmp_path: Path
) -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    ca = make_ca(start=now - DAY, end=now + 365 * DAY)
    client = issue(ca, "node0", start=now - DAY, end=now + 3 * DAY)
    files = write_files(tmp_path / "pki", ca, client)
    cm = _mtls_cm(contract_cm_factory, ca, issue(ca, "localhost", start=now - DAY, server=True))
    start_agent(f"localhost:{cm.port}", **_mtls_keys(files))
    session = registered(cm)
    alert = session.wait_for("alert", 10, predicate=lambda a: "expires in" in a.core_alert.message)
    assert alert.core_alert.core_component == "SM"
    assert alert.core_alert.message.startswith("certificate certFile expires in ")
    assert str(files.cert) in alert.core_alert.message
    kinds = session.kinds()
    assert kinds.index("sm_info") < kinds.index("node_instances_status") < kinds.index("alert")


def test_an_expired_client_certificate_is_named_before_connecting(
    contract_cm_factory: Callable[..., ContractCM], start_agent: Callable[..., Agent], tmp_path: Path,
    caplog: pytest.LogCaptureFixture
) -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    ca = make_ca(start=now - 30 * DAY, end=now + 365 * DAY)
    files = write_files(tmp_path / "pki", ca, issue(ca, "node0", start=now - 30 * DAY, end=now - DAY))
    cm = _mtls_cm(contract_cm_factory, ca, issue(ca, "localhost", start=now - DAY, server=True))
    with caplog.at_level(logging.ERROR, logger="aos_sm.agent.certs"):
        agent = start_agent(f"localhost:{cm.port}", connect_timeout=1.0, **_mtls_keys(files))
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=10)
        while not caplog.records and datetime.datetime.now() < deadline:
            agent.gateway.wait_synced(1, timeout=0.1)
    (record,) = [r for r in caplog.records if str(files.cert) in r.getMessage()]
    assert record.getMessage().startswith(f"TLS credentials: certFile {files.cert}: expired on ")
    assert agent.gateway.sync_count == 0
    assert os.path.exists(files.cert)


def test_a_certificate_entering_its_last_week_mid_session_is_alerted_then_once_an_hour(tmp_path: Path) -> None:
    """Registration checks on every connect; a session can last weeks, so the watch checks too,
    under the same once-an-hour limit."""
    ca = make_ca()
    files = write_files(tmp_path, ca, issue(ca, "node0", end=NOW + 10 * DAY))
    config = AgentConfig(node_id="n", cm_server_url="localhost:1", ca_cert=files.ca, cert_file=files.cert,
                         key_file=files.key)
    wall = [NOW]
    clock = [0.0]
    sent: List[str] = []
    watch = certs.ExpiryWatch(certs.ExpiryAlerts(config, now=lambda: wall[0], monotonic=lambda: clock[0]),
                              sent.append)
    watch.tick()
    assert sent == []  # 10 days left
    wall[0], clock[0] = NOW + 4 * DAY, 600.0
    watch.tick()
    assert sent == [f"certificate certFile expires in 6 days (2026-12-10 12:00 UTC): {files.cert}"]
    clock[0] = 1200.0
    watch.tick()
    assert len(sent) == 1
    clock[0] = 600.0 + certs.ALERT_INTERVAL
    watch.tick()
    assert len(sent) == 2

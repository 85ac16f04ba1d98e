"""The agent with the fake IAM over real TLS and a contract CM over mTLS (Done-when of issue 15)."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, List, Optional

import pytest
from cryptography import x509

from contract_cm import ContractCM
from iam_helpers import IAM_MAX_DMIPS, FakeIamClient, iam_config

from aos_sm.agent.app import Agent, build_agent
from aos_sm.agent.config import parse_config
from aos_sm.agent.iam.port import IamNodeInfo
from aos_sm.agent.iam.sim import SimulatedIAM
from aos_sm.agent.iam.startup import iam_client, wait_for_node_info


def peer_serial(session: Any) -> int:
    assert session.peer_cert is not None, "CM saw no client certificate"
    return int(x509.load_pem_x509_certificate(session.peer_cert).serial_number)


def registered(cm: ContractCM, index: int = -1, timeout: float = 15.0) -> Any:
    session = cm.wait_session(index, timeout)
    session.wait_for("node_instances_status", timeout)
    assert session.kinds()[:2] == ["sm_info", "node_instances_status"]
    return session


def test_sminfo_and_the_monitoring_scale_are_iams(
        tmp_path: Path, iam: SimulatedIAM, tls_cm: ContractCM, start_iam_agent: Callable[..., Agent],
        busy_process: Any) -> None:
    config = iam_config(tmp_path, iam, tls_cm.address, monitoring={"pollPeriod": "200ms", "averageWindow": "1s"})
    agent = start_iam_agent(config)
    session = registered(tls_cm)
    (sm_info,) = session.messages("sm_info")
    assert sm_info.node_id == "iam-node-7"
    assert peer_serial(session) == iam.certs["sm"].serial
    for runtime in sm_info.runtimes:  # none where this machine cannot run runc
        assert runtime.max_dmips == IAM_MAX_DMIPS
        assert (runtime.os_info.os, runtime.arch_info.architecture) == ("linux", "arm64")
        assert runtime.total_ram == 2 * 1024**3
    measured = sum(core.dmips for core in agent.capacity.cpus if core.online)
    # A busy core is a share of IAM's 10^9 DMIPS: far above the whole node's measured figure.
    monitoring = session.wait_for("instant_monitoring",
                                  predicate=lambda m: m.node_monitoring.cpu > measured,
                                  timeout=15.0)
    assert monitoring.node_monitoring.cpu <= IAM_MAX_DMIPS


def test_a_renewal_iam_pushes_gives_a_new_session_with_the_new_certificate(
        tmp_path: Path, iam: SimulatedIAM, tls_cm: ContractCM, start_iam_agent: Callable[..., Agent]) -> None:
    start_iam_agent(iam_config(tmp_path, iam, tls_cm.address))
    first = registered(tls_cm, 0)
    old_serial = peer_serial(first)
    assert old_serial == iam.certs["sm"].serial
    renewed = iam.renew("sm")
    second = registered(tls_cm, 1, timeout=5.0)  # the 5 s the file watcher path promises
    assert peer_serial(second) == renewed.serial != old_serial
    assert first.wait_closed(5.0)


def test_iam_away_at_start_the_agent_waits_says_so_and_registers_once_iam_is_back(
        tmp_path: Path, iam: SimulatedIAM, tls_cm: ContractCM, caplog: pytest.LogCaptureFixture) -> None:
    iam.stop()
    config = iam_config(tmp_path, iam, tls_cm.address)
    client = iam_client(config)
    statuses: List[str] = []
    result: List[Optional[Any]] = []
    stop = threading.Event()
    caplog.set_level(logging.WARNING, "aos_sm.agent.iam.startup")
    waiter = threading.Thread(target=lambda: result.append(wait_for_node_info(client, config, stop, statuses.append)))
    waiter.start()
    deadline = time.monotonic() + 10
    while len(statuses) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(statuses) >= 2 and statuses[0].startswith(f"waiting for IAM at {iam.public_address} before contacting CM")
    assert any("waiting for IAM" in record.getMessage() for record in caplog.records)
    assert tls_cm.sessions == []  # CM is not contacted while the identity is unknown
    iam.start()
    waiter.join(10)
    assert not waiter.is_alive() and result and result[0] is not None
    agent = build_agent(config, iam=(client, result[0]))
    agent.start()
    try:
        (sm_info,) = registered(tls_cm).messages("sm_info")
        assert sm_info.node_id == "iam-node-7"
    finally:
        assert agent.stop(timeout=5.0)


def test_stopping_while_iam_is_away_returns_without_identity(tmp_path: Path, iam: SimulatedIAM) -> None:
    iam.stop()
    config = iam_config(tmp_path, iam, "127.0.0.1:1")
    stop = threading.Event()
    stop.set()
    assert wait_for_node_info(iam_client(config), config, stop) is None


def test_a_pkcs11_key_url_is_one_clear_error_line_and_no_session(
        tmp_path: Path, iam: SimulatedIAM, tls_cm: ContractCM, start_iam_agent: Callable[..., Agent],
        caplog: pytest.LogCaptureFixture) -> None:
    iam.key_url_override["sm"] = "pkcs11:token=aos;object=sm;type=private"
    caplog.set_level(logging.INFO)
    agent = start_iam_agent(iam_config(tmp_path, iam, tls_cm.address))
    deadline = time.monotonic() + 10
    while agent.gateway.problem is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.5)  # several attempts at the 1 s cap: still one line (once a minute)
    lines = [r.getMessage() for r in caplog.records if "PKCS#11" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "IAM certificate 'sm': the key is a PKCS#11 object" in lines[0]
    assert "\n" not in lines[0] and lines[0].count("PKCS#11") == 2
    assert tls_cm.sessions == []


def test_plaintext_with_iam_takes_the_identity_and_asks_no_certificate(tmp_path: Path) -> None:
    """Development: IAM for the identity, CM without TLS: no certificate is asked or presented."""
    client = FakeIamClient(IamNodeInfo(node_id="dev-node", max_dmips=777))
    asked: List[str] = []
    client.get_cert = lambda cert_type, timeout: asked.append(cert_type)  # type: ignore[method-assign,assignment,return-value]
    with ContractCM() as cm:
        config = parse_config(json.dumps({"cmServerURL": cm.address, "tlsMode": "plaintext",
                                          "iamPublicServerURL": "127.0.0.1:9", "workingDir": str(tmp_path / "w"),
                                          "resourcesConfigFile": str(tmp_path / "r.cfg"),
                                          "runtimes": [{"type": "runc"}], "network": {"enabled": False}}))
        agent = build_agent(config, iam=(client, client.node_info))
        agent.start()
        try:
            (sm_info,) = registered(cm).messages("sm_info")
            assert sm_info.node_id == "dev-node" and asked == []
            assert all(runtime.max_dmips == 777 for runtime in sm_info.runtimes)
        finally:
            assert agent.stop(timeout=5.0)


def test_a_certificate_type_iam_does_not_have_is_a_configuration_problem(
        tmp_path: Path, iam: SimulatedIAM, tls_cm: ContractCM, start_iam_agent: Callable[..., Agent],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    agent = start_iam_agent(iam_config(tmp_path, iam, tls_cm.address, certStorage="nosuch"))
    deadline = time.monotonic() + 10
    while agent.gateway.problem is None and time.monotonic() < deadline:
        time.sleep(0.05)
    problem = agent.gateway.problem
    assert problem is not None and problem.configuration_problem and problem.code == "FAILED_PRECONDITION"
    assert any("no client certificate from IAM: NOT_FOUND: no certificate of type 'nosuch'" in r.getMessage()
               for r in caplog.records)
    assert tls_cm.sessions == []

"""The agent against a real gRPC CM on 127.0.0.1 that decodes with descriptors built from the
wire contract (tests/contract_cm.py), never with the agent's own generated code.

One real server per transport path: the RegisterSM stream (every command kind; hostile frames;
a newer CM's encoding; a CM restart), the unary GetBlobsInfos, each security mode, and the
process under signals. Everything else about the gateway runs over the in-memory transport
(tests/agent/test_gateway.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from contract import example_commands
from contract_cm import ContractCM, random_frames, v91_update_instances
from tls import TLSMaterial

from agent_helpers import make_config, registered

from aos_sm.agent.app import Agent
from aos_sm.agent.dispatch import UNDECODABLE_ALERT_INTERVAL
from aos_sm.agent.errors import InvalidArgument, NotFound
from aos_sm.agent.transport import GrpcTransport, TransportFailure
from aos_sm.statemachine import recovery_for

NOT_SUPPORTED, INVALID_ARGUMENT, ALREADY_EXIST, WRONG_STATE, RUNTIME, NOT_FOUND = 12, 6, 8, 9, 2, 5


def test_every_command_kind_gets_its_reply_with_error_filled(
    contract_cm: ContractCM, start_agent: Callable[..., Agent], tmp_path: Path
) -> None:
    agent = start_agent(contract_cm.address, logging={"systemLog": str(tmp_path / "no-such-log")})
    session = registered(contract_cm)
    commands = example_commands()
    assert set(commands) == set(contract_cm.contract.incoming_kinds)

    session.send("get_node_config_status", commands["get_node_config_status"])
    status = session.wait_for("node_config_status")
    assert (status.state, status.error.aos_code) == ("absent", 0)
    assert status.HasField("error")

    session.send("check_node_config", commands["check_node_config"])
    checked = session.wait_for("node_config_status")
    assert (checked.state, checked.version, checked.error.aos_code) == ("absent", "1.0.0", 0)

    session.send("set_node_config", commands["set_node_config"])
    applied = session.wait_for("node_config_status")
    assert (applied.state, applied.version, applied.error.aos_code) == ("absent", "1.0.0", 0)

    session.send("update_instances", commands["update_instances"])
    # Stops first: service2 was not running; it is reported inactive all the same.
    stopped = session.wait_for("update_instances_status")
    assert [(s.instance.item_id, s.state) for s in stopped.instances] == [("service2", "inactive")]
    # The example's runtime id "runc" is a type, not a runtime id this node registered.
    activating = session.wait_for("update_instances_status")
    assert [(s.instance.item_id, s.state) for s in activating.instances] == [("service1", "activating")]
    update = session.wait_for("update_instances_status")
    assert [(s.instance.item_id, s.state, s.error.aos_code) for s in update.instances] == [
        ("service1", "failed", NOT_FOUND)
    ]
    assert session.wait_for("node_instances_status", predicate=lambda m: len(m.instances) == 1)

    # No system log file: an error naming it. service1 is known (failed) but never wrote a line:
    # empty; it never crashed: absent (tests/agent/test_logs.py).
    for kind, correlation, expected in (("system_log_request", "log-1", ("error", 0, 0, RUNTIME)),
                                        ("instance_log_request", "log-2", ("empty", 1, 1, 0)),
                                        ("instance_crash_log_request", "log-3", ("absent", 1, 1, 0))):
        session.send(kind, commands[kind])
        part = session.wait_for("log", predicate=lambda m, c=correlation: m.correlation_id == c)
        assert (part.status, part.part, part.part_count, part.error.aos_code) == expected
        assert part.status != "error" or "no-such-log" in part.error.message

    session.send("get_average_monitoring", commands["get_average_monitoring"])
    average = session.wait_for("average_monitoring")
    assert average.node_monitoring.timestamp.seconds > 0

    heard: list[bool] = []
    agent.cloud.add_listener(heard.append)
    session.send("connection_status", commands["connection_status"])
    session.send("connection_status", commands["connection_status"])  # repeated: no new notice
    session.send("update_networks", commands["update_networks"])
    alert = session.wait_for("alert", predicate=lambda m: "UpdateNetworks" in m.core_alert.message)
    assert alert.core_alert.core_component == "SM"
    assert heard == [True] and agent.cloud.connected is True
    assert not session.closed.is_set()


def test_cm_restarted_on_the_same_port_gets_a_fresh_registration(
    contract_cm_factory: Callable[..., ContractCM], start_agent: Callable[..., Agent]
) -> None:
    cm = contract_cm_factory()
    port = cm.port
    agent = start_agent(cm.address)
    registered(cm)
    cm.stop()
    restarted = contract_cm_factory(port=port)
    session = registered(restarted, index=0, timeout=15.0)
    assert session.messages("sm_info")[0].node_id == "node-test"
    # CM can see NodeInstancesStatus a moment before the agent counts the session as synced.
    assert agent.gateway.wait_synced(2, timeout=5.0)


# Hostile and newer CMs: one message lost at most, never the stream.


def test_ten_thousand_random_frames_never_close_the_session_and_every_valid_request_is_answered(
    contract_cm: ContractCM, start_agent: Callable[..., Agent]
) -> None:
    agent = start_agent(contract_cm.address)
    session = registered(contract_cm)
    started = time.monotonic()
    config = json.dumps({"nodeGroupSubject": {"codename": "main"}})
    versions = []
    for number, frame in enumerate(random_frames(seed=12, count=10_000)):
        session.send_raw(frame)
        if number % 100 == 99:  # a valid request after every hundred random frames
            versions.append(f"7.0.{number // 100}")
            session.send("check_node_config", {"nodeConfig": config, "version": versions[-1]})
    for version in versions:
        reply = session.wait_for("node_config_status", timeout=30.0,
                                 predicate=lambda m, v=version: m.version == v)
        assert reply.error.aos_code == 0, reply.error.message
    assert len(versions) == 100
    assert not session.closed.is_set() and len(contract_cm.sessions) == 1
    assert agent.gateway.sync_count == 1
    # Rate-limited: at most one CoreAlert per request kind (and one for plain garbage) a minute;
    # under emulation the flood can outlast a minute.
    windows = int((time.monotonic() - started) // UNDECODABLE_ALERT_INTERVAL) + 1
    undecodable = [m for m in session.messages("alert") if "undecodable" in m.core_alert.message]
    assert 1 <= len(undecodable) <= (len(contract_cm.contract.incoming_kinds) + 1) * windows


def test_a_v9_1_update_instances_gives_a_core_alert_and_the_stream_stays_up(
    contract_cm: ContractCM, start_agent: Callable[..., Agent]
) -> None:
    start_agent(contract_cm.address)
    session = registered(contract_cm)
    session.send_raw(v91_update_instances(contract_cm.contract, "svc91"))
    alert = session.wait_for("alert", predicate=lambda m: "UpdateInstances" in m.core_alert.message)
    assert "network_parameters.network_id: not valid UTF-8" in alert.core_alert.message
    assert alert.core_alert.core_component == "SM"
    failed = session.wait_for("update_instances_status")
    assert [(s.instance.item_id, s.state, s.error.aos_code) for s in failed.instances] == [
        ("svc91", "failed", INVALID_ARGUMENT)]
    assert failed.instances[0].error.message.startswith("network_parameters.network_id")
    session.wait_for("node_instances_status", predicate=lambda m: not m.instances)
    session.send("get_node_config_status", {})
    assert session.wait_for("node_config_status").state == "absent"
    assert not session.closed.is_set() and len(contract_cm.sessions) == 1


def test_get_blobs_infos_resolves_digests_in_order(
    contract_cm: ContractCM, start_agent: Callable[..., Agent]
) -> None:
    agent = start_agent(contract_cm.address)
    registered(contract_cm)
    assert agent.gateway.wait_synced(1)
    contract_cm.blob_urls.update({"sha256:b": "http://blobs/b", "sha256:a": "file:///blobs/a"})
    resolve = agent.gateway.blob_urls  # the client app.py hands the launcher
    assert resolve(["sha256:b", "sha256:a"]) == ["http://blobs/b", "file:///blobs/a"]
    assert contract_cm.blob_requests == [["sha256:b", "sha256:a"]]
    with pytest.raises(NotFound, match="sha256:zzz"):
        resolve(["sha256:zzz"])


# Security modes.


def test_mtls_registers_and_presents_the_client_certificate(
    contract_cm_factory: Callable[..., ContractCM], tls_material: TLSMaterial,
    start_agent: Callable[..., Agent],
) -> None:
    cm = contract_cm_factory(credentials=tls_material.server_credentials(require_client_auth=True))
    start_agent(f"localhost:{cm.port}", **_mtls_keys(tls_material))
    session = registered(cm)
    assert session.peer_cert is not None and b"BEGIN CERTIFICATE" in session.peer_cert
    assert session.peer_cert.strip() == tls_material.client.cert_pem().strip()


def test_server_only_tls_registers_without_a_client_certificate(
    contract_cm_factory: Callable[..., ContractCM], tls_material: TLSMaterial,
    start_agent: Callable[..., Agent],
) -> None:
    cm = contract_cm_factory(credentials=tls_material.server_credentials(require_client_auth=False))
    start_agent(f"localhost:{cm.port}", tlsMode="tls", caCert=str(tls_material.ca.cert))
    session = registered(cm)
    assert session.peer_cert is None


def test_an_untrusted_cm_never_sees_sm_info(
    contract_cm_factory: Callable[..., ContractCM], tls_material: TLSMaterial,
    start_agent: Callable[..., Agent],
) -> None:
    cm = contract_cm_factory(credentials=tls_material.server_credentials(untrusted=True))
    agent = start_agent(f"localhost:{cm.port}", connect_timeout=1.0, **_mtls_keys(tls_material))
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline and ("ConnectFailed", "Backoff") not in agent.gateway.history:
        time.sleep(0.05)
    assert ("ConnectFailed", "Backoff") in agent.gateway.history
    assert cm.sessions == []
    assert agent.gateway.sync_count == 0


def test_a_rotated_client_certificate_is_used_on_the_next_session(
    contract_cm_factory: Callable[..., ContractCM], tls_material: TLSMaterial,
    start_agent: Callable[..., Agent],
) -> None:
    cm = contract_cm_factory(credentials=tls_material.server_credentials(require_client_auth=True))
    agent = start_agent(f"localhost:{cm.port}", **_mtls_keys(tls_material))
    first = registered(cm)
    rotated = tls_material.reissue_client_cert("node0-renewed")
    renewed_at = time.monotonic()
    second = registered(cm, index=1, timeout=5.0)
    assert time.monotonic() - renewed_at < 5.0
    assert first.wait_closed(5.0)
    assert second.peer_cert is not None and second.peer_cert.strip() == rotated.strip()
    assert ("CertificatesChanged", "Backoff") in agent.gateway.history


def _mtls_keys(tls: TLSMaterial) -> dict:
    return {"tlsMode": "mtls", "caCert": str(tls.ca.cert), "certFile": str(tls.client.cert),
            "keyFile": str(tls.client.key)}


# The process: `aos-sm run` stops cleanly on SIGTERM.


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_aos_sm_run_exits_0_on_sigterm_and_sigint(
    contract_cm: ContractCM, tmp_path: Path, signum: int
) -> None:
    config = tmp_path / "sm.json"
    config.write_text(json.dumps({
        "nodeId": "node-proc", "cmServerURL": contract_cm.address, "network": {"enabled": False}, "tlsMode": "plaintext",
        "workingDir": str(tmp_path / "work"), "resourcesConfigFile": str(tmp_path / "none.cfg"),
    }))
    process = subprocess.Popen(
        [sys.executable, "-m", "aos_sm.agent.cli", "run", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        session = registered(contract_cm, timeout=30.0)
        assert session.messages("sm_info")[0].node_id == "node-proc"
        process.send_signal(signum)
        started = time.monotonic()
        assert process.wait(timeout=10) == 0
        assert time.monotonic() - started < 5.0
        assert session.wait_closed(5.0)
    finally:
        if process.poll() is None:
            process.kill()
        _, stderr = process.communicate(timeout=5)
    assert "Traceback" not in stderr, stderr


# The gRPC adapter's hook for checks before every connect (certificates: agent/certs.py).


def test_a_failing_before_connect_check_fails_the_attempt_as_a_configuration_problem(tmp_path: Path) -> None:
    checks: list[int] = []

    def check() -> None:
        checks.append(1)
        raise InvalidArgument("certFile /etc/aos/sm.pem: expired on 2026-01-01")

    transport = GrpcTransport(make_config(tmp_path, "127.0.0.1:1"), "127.0.0.1:1", before_connect=check)
    with pytest.raises(TransportFailure, match="sm.pem: expired") as failure:
        transport.connect()
    assert failure.value.code == "FAILED_PRECONDITION" and checks == [1]
    assert recovery_for(failure.value.code).configuration_problem

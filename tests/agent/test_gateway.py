"""The agent against a real gRPC CM on 127.0.0.1 that decodes with descriptors built from the
wire contract (tests/contract_cm.py), never with the agent's own generated code."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from contract import example_commands, length_delimited_field
from contract_cm import ContractCM
from tls import TLSMaterial

from agent_helpers import make_config, registered, registered_runtime

from aos_sm.agent.app import Agent, build_agent
from aos_sm.agent.errors import NotFound, WrongState
from aos_sm.agent.messages import core_alert
from aos_sm.statemachine import State

NOT_SUPPORTED, INVALID_ARGUMENT, ALREADY_EXIST, WRONG_STATE, RUNTIME, NOT_FOUND = 12, 6, 8, 9, 2, 5


def test_registration_sends_sm_info_first_then_node_instances_status(
    contract_cm: ContractCM, start_agent: Callable[..., Agent]
) -> None:
    agent = start_agent(contract_cm.address)
    session = registered(contract_cm)
    sm_info = session.messages("sm_info")[0]
    assert sm_info.node_id == "node-test"
    assert agent.gateway.wait_synced(1)
    assert agent.gateway.state in (State.Synced, State.Processing)
    runtime = registered_runtime(sm_info)
    assert runtime.type == "runc"
    assert runtime.max_dmips > 0 and runtime.total_ram > 0 and runtime.max_instances > 0


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


def test_malformed_config_and_invalid_semver_get_errors_and_the_stream_stays_up(
    contract_cm: ContractCM, start_agent: Callable[..., Agent]
) -> None:
    start_agent(contract_cm.address)
    session = registered(contract_cm)
    session.send("check_node_config", {"nodeConfig": "{\"version\": ", "version": "1.0.0"})
    malformed = session.wait_for("node_config_status")
    assert malformed.error.aos_code == INVALID_ARGUMENT and malformed.error.message
    assert (malformed.state, malformed.version) == ("absent", "1.0.0")

    config = json.dumps({"nodeGroupSubject": {"codename": "main"}})
    session.send("set_node_config", {"nodeConfig": config, "version": "one.two"})
    bad_version = session.wait_for("node_config_status")
    assert bad_version.error.aos_code == INVALID_ARGUMENT and "one.two" in bad_version.error.message

    session.send("set_node_config", {"nodeConfig": config, "version": "2.0.0"})
    assert session.wait_for("node_config_status").error.aos_code == 0
    session.send("set_node_config", {"nodeConfig": config, "version": "2.0.0"})
    assert session.wait_for("node_config_status").error.aos_code == ALREADY_EXIST
    session.send("set_node_config", {"nodeConfig": config, "version": "1.9.0"})
    lower = session.wait_for("node_config_status")
    assert (lower.error.aos_code, lower.state) == (WRONG_STATE, "installed")
    assert not session.closed.is_set() and len(contract_cm.sessions) == 1


def test_node_config_survives_an_agent_restart(
    contract_cm: ContractCM, tmp_path: Path, start_agent: Callable[..., Agent]
) -> None:
    first = start_agent(contract_cm.address)
    session = registered(contract_cm)
    config = json.dumps({"nodeGroupSubject": {"codename": "main"}})
    session.send("set_node_config", {"nodeConfig": config, "version": "3.1.4"})
    assert session.wait_for("node_config_status").error.aos_code == 0
    assert first.stop()
    start_agent(contract_cm.address)
    again = registered(contract_cm, index=1)
    again.send("get_node_config_status", {})
    status = again.wait_for("node_config_status")
    assert (status.state, status.version) == ("installed", "3.1.4")


def test_an_unknown_oneof_field_is_ignored_and_the_stream_stays_up(
    contract_cm: ContractCM, start_agent: Callable[..., Agent]
) -> None:
    start_agent(contract_cm.address)
    session = registered(contract_cm)
    # Field 42 of SMIncomingMessages: a kind a newer CM might send; valid protobuf, unknown to us.
    session.send_raw(length_delimited_field(42, b"\x0a\x03abc"))
    session.send("get_node_config_status", {})
    assert session.wait_for("node_config_status").state == "absent"
    assert not session.closed.is_set() and len(contract_cm.sessions) == 1


def test_a_garbage_frame_breaks_only_that_stream_and_the_agent_re_registers(
    contract_cm: ContractCM, start_agent: Callable[..., Agent]
) -> None:
    agent = start_agent(contract_cm.address)
    first = registered(contract_cm)
    first.send_raw(b"\xff\xff\xff\xff\xff")
    assert first.wait_closed(5.0)
    second = registered(contract_cm, index=1)
    second.send("get_node_config_status", {})
    assert second.wait_for("node_config_status").error.aos_code == 0
    assert agent.gateway.wait_synced(2)


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


def test_alerts_sent_while_disconnected_follow_the_next_registration(
    contract_cm_factory: Callable[..., ContractCM], start_agent: Callable[..., Agent]
) -> None:
    cm = contract_cm_factory()
    port = cm.port
    agent = start_agent(cm.address)
    registered(cm)
    # Live only once the agent has seen its registration through; stopping CM earlier would
    # let the outage messages below be flushed into the dying first session.
    assert agent.gateway.wait_synced(1, timeout=10)
    cm.stop()
    deadline = time.monotonic() + 5
    while agent.outbox.live and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not agent.outbox.live
    for number in range(3):
        agent.outbox.send(core_alert(f"during outage {number}"))
    restarted = contract_cm_factory(port=port)
    session = registered(restarted, index=0, timeout=15.0)
    alerts = [session.wait_for("alert").core_alert.message for _ in range(3)]
    assert alerts == ["during outage 0", "during outage 1", "during outage 2"]
    kinds = session.kinds()
    assert kinds.index("node_instances_status") < kinds.index("alert")


def test_get_blobs_infos_resolves_digests_in_order(
    contract_cm: ContractCM, start_agent: Callable[..., Agent]
) -> None:
    agent = start_agent(contract_cm.address)
    registered(contract_cm)
    assert agent.gateway.wait_synced(1)
    contract_cm.blob_urls.update({"sha256:b": "http://blobs/b", "sha256:a": "file:///blobs/a"})
    assert agent.gateway.get_blobs_infos(["sha256:b", "sha256:a"]) == ["http://blobs/b", "file:///blobs/a"]
    with pytest.raises(NotFound, match="sha256:zzz"):
        agent.gateway.get_blobs_infos(["sha256:zzz"])


def test_get_blobs_infos_without_a_session_is_a_clear_error(tmp_path: Path) -> None:
    agent = build_agent(make_config(tmp_path, "127.0.0.1:1"))
    with pytest.raises(WrongState, match="not connected"):
        agent.gateway.get_blobs_infos(["sha256:a"])


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
        "nodeId": "node-proc", "cmServerURL": contract_cm.address, "tlsMode": "plaintext",
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

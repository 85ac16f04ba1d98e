"""What the node registers: the probe's numbers on the wire, and resources that survive bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from contract_cm import ContractCM
from tls import TLSMaterial
from agent_helpers import registered, registered_runtime, running_goarch

from aos_sm.agent.app import Agent
from aos_sm.agent.rpc import CHANNEL_OPTIONS


def _about_resources(alert: Any) -> bool:
    """Resource problems only: a node that can run no runtime (the qemu-user chroot has no
    cgroups) also says so in a CoreAlert."""
    return str(alert.core_alert.message).startswith("resources config")


def probe_json(config: Path) -> Any:
    result = subprocess.run(
        [sys.executable, "-m", "aos_sm.agent.cli", "probe", "--json", "--config", str(config)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_sm_info_on_the_wire_carries_the_numbers_probe_prints(
    contract_cm: ContractCM, tmp_path: Path, start_agent: Callable[..., Agent]
) -> None:
    config = tmp_path / "sm.json"
    config.write_text(json.dumps({
        "nodeId": "node-test", "cmServerURL": contract_cm.address, "network": {"enabled": False}, "tlsMode": "plaintext",
        "workingDir": str(tmp_path / "work"), "resourcesConfigFile": str(tmp_path / "resources.cfg"),
        "runtimes": [{"type": "runc"}],
    }))
    printed = probe_json(config)["smInfo"]
    start_agent(contract_cm.address)
    wire = registered(contract_cm).messages("sm_info")[0]
    memtotal_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                        if line.startswith("MemTotal:"))
    runtime = registered_runtime(wire)
    assert runtime.total_ram == memtotal_kib * 1024
    assert runtime.max_dmips > 0
    assert printed["nodeId"] == wire.node_id
    (printed_runtime,) = printed["runtimes"]
    for json_name, field in (("runtimeId", "runtime_id"), ("type", "type"), ("maxDmips", "max_dmips"),
                             ("totalRam", "total_ram"), ("maxInstances", "max_instances")):
        assert str(printed_runtime[json_name]) == str(getattr(runtime, field)), json_name
    assert printed_runtime["archInfo"]["architecture"] == runtime.arch_info.architecture
    assert runtime.arch_info.architecture == running_goarch() or not running_goarch()


def test_a_bad_resources_file_still_registers_the_valid_resources(
    contract_cm: ContractCM, tmp_path: Path, start_agent: Callable[..., Agent]
) -> None:
    (tmp_path / "resources.cfg").write_text(json.dumps([
        {"name": "null-device", "sharedCount": 2, "devices": ["/dev/null:/dev/null"]},
        {"name": "camera", "sharedCount": 1, "devices": ["/dev/aos-sm-test-no-such-camera0"]},
        {"name": "gpio", "sharedCount": "many"},
        {"sharedCount": 1},
    ]))
    start_agent(contract_cm.address)
    session = registered(contract_cm)
    sm_info = session.messages("sm_info")[0]
    assert [(r.name, r.shared_count) for r in sm_info.resources] == [("null-device", 2)]
    alerts = [session.wait_for("alert", predicate=_about_resources).core_alert.message for _ in range(3)]
    joined = "\n".join(alerts)
    assert "camera" in joined and "no-such-camera0" in joined
    assert "gpio" in joined and "sharedCount" in joined
    assert "resource 3" in joined and "`name`" in joined


def test_unreadable_resources_json_registers_with_no_resources(
    contract_cm: ContractCM, tmp_path: Path, start_agent: Callable[..., Agent]
) -> None:
    (tmp_path / "resources.cfg").write_text("[{\"name\": ")
    start_agent(contract_cm.address)
    session = registered(contract_cm)
    assert list(session.messages("sm_info")[0].resources) == []
    assert "resources" in session.wait_for("alert", predicate=_about_resources).core_alert.message


def test_keepalive_is_what_the_reference_cm_expects() -> None:
    options = dict(CHANNEL_OPTIONS)
    assert options["grpc.keepalive_time_ms"] == 10_000
    assert options["grpc.keepalive_timeout_ms"] == 3_000
    assert options["grpc.keepalive_permit_without_calls"] == 1


def test_certificates_that_appear_later_are_picked_up(
    contract_cm_factory: Callable[..., ContractCM], tls_material: TLSMaterial,
    tmp_path: Path, start_agent: Callable[..., Agent],
) -> None:
    """Provisioning writes the node's certificate after the agent started: it connects then."""
    cm = contract_cm_factory(credentials=tls_material.server_credentials(require_client_auth=True))
    cert, key = tmp_path / "later.pem", tmp_path / "later.key"
    agent = start_agent(f"localhost:{cm.port}", tlsMode="mtls", caCert=str(tls_material.ca.cert),
                        certFile=str(cert), keyFile=str(key))
    deadline = time.monotonic() + 5
    while ("ConnectFailed", "Backoff") not in agent.gateway.history and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ("ConnectFailed", "Backoff") in agent.gateway.history
    assert cm.sessions == []
    key.write_bytes(tls_material.client.key_pem())
    cert.write_bytes(tls_material.client.cert_pem())
    session = registered(cm, timeout=5.0)
    assert session.messages("sm_info")[0].node_id == "node-test"


def test_the_channels_own_reconnect_backoff_stays_within_the_agents_cap() -> None:
    """gRPC jitters its backoff by +-20 %: its cap is set so a jittered retry is still within
    cmReconnectTimeout, and its first retry waits as long as the agent's first wait."""
    from aos_sm.agent.rpc import reconnect_options

    for first_wait, cap in ((0.5, 10.0), (0.05, 1.0), (0.2, 0.5)):
        options = dict(reconnect_options(first_wait, cap))
        assert options["grpc.max_reconnect_backoff_ms"] * 1.2 <= cap * 1000
        assert options["grpc.initial_reconnect_backoff_ms"] == max(100, int(first_wait * 1000))
        assert options["grpc.initial_reconnect_backoff_ms"] <= options["grpc.max_reconnect_backoff_ms"]
    # Test configs' 100 ms caps: gRPC is not asked to retry more often than every 100 ms.
    assert dict(reconnect_options(0.005, 0.1))["grpc.max_reconnect_backoff_ms"] == 100

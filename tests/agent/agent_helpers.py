"""Helpers for the agent's integration tests: a config for a test CM, and "registered"."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from contract_cm import ContractCM
from runtime_checks import skip_unless_runc_registers

from aos_sm.agent.config import AgentConfig, parse_config


def make_config(tmp_path: Path, address: str, **extra: Any) -> AgentConfig:
    data = {
        "nodeId": "node-test",
        "cmServerURL": address,
        "tlsMode": "plaintext",
        "cmReconnectTimeout": "100ms",
        "cmReconnectMaxTimeout": "1s",
        "workingDir": str(tmp_path / "work"),
        "resourcesConfigFile": str(tmp_path / "resources.cfg"),
        "runtimes": [{"type": "runc"}],
        # The agent runs on this machine: no network manager, which would change its firewall
        # (network tests run the agent inside a test namespace: tests/network).
        "network": {"enabled": False},
        **extra,
    }
    (tmp_path / "work").mkdir(exist_ok=True)
    return parse_config(json.dumps(data))


def registered(cm: ContractCM, index: int = -1, timeout: float = 10.0) -> Any:
    """Session ``index`` once it has registered; asserts SMInfo came first, then NodeInstancesStatus."""
    session = cm.wait_session(index, timeout)
    session.wait_for("node_instances_status", timeout)
    assert session.kinds()[:2] == ["sm_info", "node_instances_status"]
    return session



def registered_runtime(sm_info: Any) -> Any:
    """The one runtime the test config names (runc), as SMInfo registered it; skips with the
    reason where this machine can register none."""
    if not sm_info.runtimes:
        skip_unless_runc_registers()
    (runtime,) = sm_info.runtimes
    return runtime


def running_goarch() -> str:
    """The running machine's GOARCH from a source independent of the agent's uname mapping:
    Debian's architecture name (amd64 here, arm64 in the qemu-user arm64 suite); "" without dpkg."""
    import shutil
    import subprocess

    dpkg = shutil.which("dpkg")
    if dpkg is None:
        return ""
    name = subprocess.run([dpkg, "--print-architecture"], capture_output=True, text=True, check=True).stdout.strip()
    return {"armhf": "arm", "armel": "arm", "i386": "386"}.get(name, name)

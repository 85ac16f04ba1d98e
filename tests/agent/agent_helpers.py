"""Helpers for the agent's integration tests: a config for a test CM, and "registered"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent_config import agent_config
from contract_cm import ContractCM
from runtime_checks import skip_unless_runc_registers

from aos_sm.agent.config import AgentConfig


def make_config(tmp_path: Path, address: str, **extra: Any) -> AgentConfig:
    """A plaintext agent config with its own node id (no discovery, no IAM)."""
    return agent_config(tmp_path, address, **{"nodeId": "node-test", "tlsMode": "plaintext", **extra})


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

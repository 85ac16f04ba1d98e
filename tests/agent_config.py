"""The config the integration tests give an agent: quick reconnects, a working dir under the
test's tmp_path, runc, and no network manager (these agents run in the machine's own network
namespace; tests/network runs the agent inside a namespace of its own)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aos_sm.agent.config import AgentConfig, parse_config


def agent_config(tmp_path: Path, cm_address: str, **keys: Any) -> AgentConfig:
    """The test config with ``keys`` (config keys as written in the file) added or replaced."""
    data = {
        "cmServerURL": cm_address,
        "cmReconnectTimeout": "100ms",
        "cmReconnectMaxTimeout": "1s",
        "workingDir": str(tmp_path / "work"),
        "resourcesConfigFile": str(tmp_path / "resources.cfg"),
        "runtimes": [{"type": "runc"}],
        "network": {"enabled": False},
        **keys,
    }
    (tmp_path / "work").mkdir(exist_ok=True)
    return parse_config(json.dumps(data))

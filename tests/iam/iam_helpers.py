"""Helpers of the IAM tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aos_sm.agent.config import AgentConfig, parse_config
from aos_sm.agent.iam.sim import SimulatedIAM

IAM_MAX_DMIPS = 10**9  # far above anything this machine measures: the scale is visibly IAM's


def iam_config(tmp_path: Path, iam: SimulatedIAM, cm_address: str, **extra: Any) -> AgentConfig:
    data = {
        "cmServerURL": cm_address,
        "tlsMode": "mtls",
        "caCert": str(iam.ca.cert_path),
        "iamPublicServerURL": iam.public_address,
        "iamProtectedServerURL": iam.protected_address,
        "certStorage": "sm",
        "cmReconnectTimeout": "100ms",
        "cmReconnectMaxTimeout": "1s",
        "workingDir": str(tmp_path / "work"),
        "resourcesConfigFile": str(tmp_path / "resources.cfg"),
        "runtimes": [{"type": "runc"}],
        **extra,
    }
    (tmp_path / "work").mkdir(exist_ok=True)
    return parse_config(json.dumps(data))

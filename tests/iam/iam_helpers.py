"""Helpers of the IAM tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from agent_config import agent_config

from aos_sm.agent.config import AgentConfig
from aos_sm.agent.iam.port import IamCertInfo, IamNodeInfo, IamUnavailable, Subscription
from aos_sm.agent.iam.sim import SimulatedIAM

IAM_MAX_DMIPS = 10**9  # far above anything this machine measures: the scale is visibly IAM's


def iam_config(tmp_path: Path, iam: SimulatedIAM, cm_address: str, **extra: Any) -> AgentConfig:
    """An agent config in IAM mode: node id and certificates from ``iam``, CM over mTLS."""
    return agent_config(tmp_path, cm_address, **{
        "tlsMode": "mtls", "caCert": str(iam.ca.cert_path), "iamPublicServerURL": iam.public_address,
        "iamProtectedServerURL": iam.protected_address, "certStorage": "sm", **extra})


class FakeIamClient:
    """The IAM port in memory: answers ``node_info`` after ``failures`` refusals."""

    def __init__(self, node_info: IamNodeInfo, failures: int = 0) -> None:
        self.node_info = node_info
        self.failures = failures
        self.calls = 0

    def get_node_info(self, timeout: float) -> IamNodeInfo:
        self.calls += 1
        if self.calls <= self.failures:
            raise IamUnavailable("UNAVAILABLE", "connection refused")
        return self.node_info

    def subscribe_node_changed(self, on_change: Callable[[IamNodeInfo], None]) -> Subscription:
        return Subscription()

    def get_cert(self, cert_type: str, timeout: float) -> IamCertInfo:
        return IamCertInfo(cert_type, "file:///c.pem", "file:///k.pem")

    def subscribe_cert_changed(self, cert_type: str, on_change: Callable[[IamCertInfo], None]) -> Subscription:
        return Subscription()

    def register_instance(self, instance: Any, permissions: Any, timeout: float) -> str:
        return "secret"

    def unregister_instance(self, instance: Any, timeout: float) -> None:
        return None

    def close(self) -> None:
        return None

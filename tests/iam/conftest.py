"""Fixtures for the IAM tests: the fake IAM over TLS with its own CA, a contract CM whose server
certificate that CA signed (mTLS: CM sees the certificate IAM gave the agent), and agents wired as
`aos-sm run` wires them in IAM mode."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, List

import pytest

from contract_cm import ContractCM
from iam_helpers import IAM_MAX_DMIPS

from aos_sm.agent.app import Agent, build_agent
from aos_sm.agent.config import AgentConfig
from aos_sm.agent.iam.sim import SimulatedIAM, default_node_info
from aos_sm.agent.iam.startup import iam_client, wait_for_node_info



@pytest.fixture
def busy_process() -> Iterator["subprocess.Popen[bytes]"]:
    """A process that keeps one CPU busy, so the node's cpu is never idle-zero during the test."""
    process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    yield process
    process.kill()
    process.wait()


@pytest.fixture
def iam(tmp_path: Path) -> Iterator[SimulatedIAM]:
    info = default_node_info("iam-node-7")
    info.max_dmips = IAM_MAX_DMIPS
    info.cpus[0].arch_info.architecture, info.cpus[0].arch_info.variant = "arm64", "v8"
    sim = SimulatedIAM(tmp_path / "iam", node_info=info).start()
    yield sim
    sim.stop()


@pytest.fixture
def tls_cm(iam: SimulatedIAM) -> Iterator[ContractCM]:
    cert = iam.issue_server_cert("cm")
    cm = ContractCM(credentials=iam.ca.server_credentials(cert, require_client_auth=True)).start()
    yield cm
    cm.stop()


@pytest.fixture
def start_iam_agent(tmp_path: Path) -> Iterator[Callable[..., Agent]]:
    """What `aos-sm run` does with IAM: node info first (waiting while IAM is away), then the agent."""
    agents: List[Agent] = []

    def start(config: AgentConfig, statuses: Any = None) -> Agent:
        client = iam_client(config)
        info = wait_for_node_info(client, config, threading.Event(), (statuses or []).append)
        assert info is not None
        agent = build_agent(config, iam=(client, info))
        agent.start()
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        assert agent.stop(timeout=5.0)

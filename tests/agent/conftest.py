"""Fixtures for the agent's integration tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest

from agent_helpers import make_config

from aos_sm.agent.app import Agent, build_agent
from aos_sm.agent.transport import Transport


@pytest.fixture
def busy_process() -> Iterator[subprocess.Popen[bytes]]:
    """A process that keeps one CPU busy, so node cpu is never idle-zero during the test."""
    process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    yield process
    process.kill()
    process.wait()


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator[Callable[..., Agent]]:
    agents: list[Agent] = []

    def start(address: str, *, connect_timeout: float = 5.0, root: Path = Path("/"),
              transport: Optional[Transport] = None, **extra: Any) -> Agent:
        """``extra`` are config keys; ``root`` is the probe root (a board fixture), ``transport``
        replaces gRPC (an in-memory fake CM)."""
        agent = build_agent(make_config(tmp_path, address, **extra), connect_timeout=connect_timeout, root=root,
                            transport=transport)
        agent.start()
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        assert agent.stop(timeout=5.0)

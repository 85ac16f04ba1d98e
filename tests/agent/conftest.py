"""Fixtures for the agent's integration tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from agent_helpers import make_config

from aos_sm.agent.app import Agent, build_agent


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator[Callable[..., Agent]]:
    agents: list[Agent] = []

    def start(address: str, *, connect_timeout: float = 5.0, **extra: Any) -> Agent:
        agent = build_agent(make_config(tmp_path, address, **extra), connect_timeout=connect_timeout)
        agent.start()
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        assert agent.stop(timeout=5.0)

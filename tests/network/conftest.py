"""Fixtures for network tests: every one runs in namespaces it creates (netns.py)."""

from __future__ import annotations

from typing import Iterator

import pytest

from netns import World, make_world, netns_problem


@pytest.fixture
def world() -> Iterator[World]:
    problem = netns_problem()
    if problem is not None:
        pytest.skip(f"network test skipped because {problem}")
    made = make_world()
    yield made
    made.close()

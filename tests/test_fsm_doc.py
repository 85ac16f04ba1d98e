"""docs/fsm.md and `aos-sm fsm`: the diagram a reviewer reads is the table the code runs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from aos_sm.statemachine import EDGES, State, render_dot, render_mermaid

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "fsm.md").read_text()


def aos_sm_fsm(*args: str, path: str = os.environ.get("PATH", "")) -> "subprocess.CompletedProcess[bytes]":
    return subprocess.run([sys.executable, "-m", "aos_sm.agent.cli", "fsm", *args],
                          env={**os.environ, "PATH": path}, capture_output=True, timeout=60)


def mermaid_blocks() -> List[str]:
    return re.findall(r"```mermaid\n(.*?)```", DOC, flags=re.DOTALL)


def test_the_doc_carries_exactly_the_diagram_aos_sm_fsm_prints() -> None:
    printed = aos_sm_fsm("--format", "mermaid")
    assert printed.returncode == 0, printed.stderr
    assert mermaid_blocks() == [printed.stdout.decode()]
    assert printed.stdout.decode() == render_mermaid()


def test_the_diagram_shows_the_six_states_and_every_edge_of_the_table() -> None:
    (block,) = mermaid_blocks()
    arrows = set(re.findall(r"^    (\w+) --> (\w+):", block, flags=re.MULTILINE))
    assert {name for arrow in arrows for name in arrow} == {state.name for state in State}
    assert len(State) == 6
    assert arrows == {(source.name, edge.dest.name) for edge in EDGES for source in edge.sources}


def test_the_explanation_names_every_state_and_event() -> None:
    prose = DOC.split("```", 2)[2]
    for state in State:
        assert f"**{state.name}**" in prose, state.name
    for event in {edge.event.__name__ for edge in EDGES}:
        assert f"`{event}`" in prose, event


def test_dot_output_is_the_rendered_table() -> None:
    printed = aos_sm_fsm("--format", "dot")
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.decode() == render_dot()


def test_svg_is_drawn_by_graphviz() -> None:
    if shutil.which("dot") is None:
        pytest.skip("Graphviz's dot is not installed (apt-get install graphviz): no SVG to check")
    printed = aos_sm_fsm("--format", "svg")
    assert printed.returncode == 0, printed.stderr
    svg = printed.stdout.decode()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg and svg.rstrip().endswith("</svg>")
    for state in State:
        assert f">{state.name}</text>" in svg, state.name


def test_svg_without_graphviz_is_a_clear_usage_error(tmp_path: Path) -> None:
    printed = aos_sm_fsm("--format", "svg", path=str(tmp_path))  # a PATH with no dot on it
    assert printed.returncode == 2
    assert printed.stdout == b""
    assert b"needs Graphviz's `dot` (apt-get install graphviz)" in printed.stderr
    assert b"Traceback" not in printed.stderr

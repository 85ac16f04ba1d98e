"""The core stays pure, and the diagram is drawn from the table the core runs."""

from __future__ import annotations

import ast
from pathlib import Path

from aos_sm.statemachine import EDGES, State, render_dot, render_mermaid
from aos_sm.statemachine.table import Edge

CORE_DIR = Path(__file__).resolve().parents[2] / "statemachine"
FORBIDDEN = {"grpc", "os", "time", "threading", "asyncio", "subprocess", "psutil", "pyroute2",
             "socket", "signal", "pathlib", "io"}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_the_core_imports_nothing_that_does_io() -> None:
    files = sorted(CORE_DIR.glob("*.py"))
    assert len(files) >= 5
    for path in files:
        assert not imported_roots(path) & FORBIDDEN, path.name


def test_the_purity_check_would_catch_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import time\nfrom grpc import aio\n")
    assert imported_roots(bad) & FORBIDDEN == {"time", "grpc"}


def test_the_six_states_are_exactly_the_designed_ones() -> None:
    assert [s.name for s in State] == [
        "Disconnected", "Connecting", "Registering", "Synced", "Processing", "Backoff"
    ]


def test_mermaid_has_one_arrow_per_table_source_and_dest() -> None:
    text = render_mermaid()
    pairs = {(src.name, edge.dest.name) for edge in EDGES for src in edge.sources}
    arrows = [line for line in text.splitlines() if "-->" in line and "[*]" not in line]
    assert len(arrows) == len(pairs)
    for src, dst in pairs:
        assert any(line.strip().startswith(f"{src} --> {dst}:") for line in arrows)
    assert "Synced --> Processing: MessageReceived" in text


class Poke:
    """An event the table does not have, to draw an edge the code does not run."""


def test_the_diagram_follows_the_table_it_is_given() -> None:
    extra = EDGES + (Edge(Poke, (State.Backoff,), State.Synced, "nothing"),)  # type: ignore[arg-type]
    assert "Backoff --> Synced: Poke" in render_mermaid(extra)
    assert "Backoff --> Synced: Poke" not in render_mermaid()
    assert 'Backoff -> Synced [label="Poke"];' in render_dot(extra)


def test_dot_is_a_digraph_with_every_state() -> None:
    text = render_dot()
    assert text.startswith("digraph session {") and text.rstrip().endswith("}")
    for state in State:
        assert f"{state.name} ->" in text or f"-> {state.name}" in text

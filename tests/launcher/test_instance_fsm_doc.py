"""docs/instance-fsm.md and `aos-sm fsm --instance`: the diagram a reviewer reads is the table
the launcher runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from aos_sm.agent.launcher.lifecycle import EDGES, WIRE_STATE, Phase
from aos_sm.agent.launcher.lifecycle_diagram import render_dot, render_mermaid

DOC = (Path(__file__).resolve().parents[2] / "docs" / "instance-fsm.md").read_text()


def aos_sm_fsm(*args: str) -> "subprocess.CompletedProcess[bytes]":
    return subprocess.run([sys.executable, "-m", "aos_sm.agent.cli", "fsm", "--instance", *args],
                          env=dict(os.environ), capture_output=True, timeout=60)


def test_the_doc_carries_exactly_the_diagram_aos_sm_fsm_instance_prints() -> None:
    printed = aos_sm_fsm("--format", "mermaid")
    assert printed.returncode == 0, printed.stderr
    assert re.findall(r"```mermaid\n(.*?)```", DOC, flags=re.DOTALL) == [printed.stdout.decode()]
    assert printed.stdout.decode() == render_mermaid()


def test_dot_output_is_the_rendered_table() -> None:
    printed = aos_sm_fsm("--format", "dot")
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.decode() == render_dot()


def test_the_explanation_names_every_state_with_its_wire_state_and_every_event() -> None:
    prose = DOC.split("```", 2)[2]
    for phase in Phase:
        assert f"**{phase.name}** (`{WIRE_STATE[phase]}`" in prose, phase.name
    for event in {edge.event for edge in EDGES}:
        assert f"`{event}`" in prose, event

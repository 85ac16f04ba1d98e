"""The README's promises that a test can hold it to."""

from __future__ import annotations

import re
from pathlib import Path

from aos_sm.statemachine import render_mermaid

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_the_readme_diagram_is_the_one_the_code_runs() -> None:
    blocks = re.findall(r"```mermaid\n(.*?)```", README, flags=re.DOTALL)
    assert blocks == [render_mermaid()]


def test_ci_runs_exactly_the_readmes_test_command() -> None:
    commands = re.findall(r"```sh\n(.*?)\n```", README, flags=re.DOTALL)
    test_command = commands[1]
    assert "pytest" in test_command
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci.splitlines()

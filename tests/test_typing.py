"""`mypy --strict` holds on the whole agent: statemachine/, hw/ and agent/.

Installed, the folders live under the ``aos_sm`` namespace through setuptools' package-dir
mapping, which mypy cannot follow in an editable install; so the test lays the same namespace
out as links in a temporary folder and checks that.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.host_only(
    reason="mypy is a development tool, not part of the arm64 stack"
)

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"agent": "agent", "hw": "hw", "statemachine": "statemachine", "proto": "proto/gen"}


def test_mypy_strict_passes_on_every_package(tmp_path: Path) -> None:
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (pip install -e '.[test]')")
    namespace = tmp_path / "aos_sm"
    namespace.mkdir()
    for name, folder in FOLDERS.items():
        (namespace / name).symlink_to(ROOT / folder)
    packages = [arg for name in ("agent", "hw", "statemachine") for arg in ("-p", f"aos_sm.{name}")]
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental",
         "--config-file", str(ROOT / "pyproject.toml"), *packages],
        cwd=tmp_path, env={"MYPYPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success" in result.stdout

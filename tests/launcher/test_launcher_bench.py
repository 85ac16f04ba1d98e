"""bench/launch.py runs and prints its ratio (tiny sizes here; the numbers come from the bench)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "launch.py"

pytestmark = [pytest.mark.system, pytest.mark.usefixtures("system")]


def test_launch_benchmark_prints_its_ratio() -> None:
    result = subprocess.run([sys.executable, str(BENCH), "--counts", "1", "2", "--rounds", "1"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "ratio aos-sm/runc" in result.stdout
    assert len([line for line in result.stdout.splitlines() if "ms |" in line]) == 2

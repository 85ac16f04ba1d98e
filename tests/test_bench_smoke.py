"""The benchmarks run and print their ratios (tiny sizes here; numbers come from bench/ itself)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.host_only(
    reason="benchmarks measure the host; emulated timings mean nothing"
)

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.parametrize(
    ("script", "args", "expected"),
    [
        ("roundtrip.py", ["--count", "50", "--rounds", "1"], "ratio agent/bare"),
        ("startup.py", ["--rounds", "1"], "RSS once registered"),
        ("logs.py", ["--size-mb", "1"], "throughput ratio agent/gzip"),
        ("monitoring.py", ["--seconds", "1", "--instances", "3"], "share of one core"),
        ("network.py", ["--rounds", "1", "--many", "2"], "ratio"),
    ],
)
def test_benchmark_prints_its_ratio(script: str, args: list, expected: str) -> None:
    result = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout
    assert "ratio" in result.stdout

"""The agent on the oldest stack we promise: what Debian bookworm ships (grpcio 1.51, protobuf
3.21 = Python 4.21.12, transitions 0.9.0, psutil 5.9.4, pyroute2 0.7.3, cryptography 38.0.4).

A venv with exactly those versions runs the gateway, contract, IAM and core tests. (The issue for the
board adds the same suite on arm64 under qemu-user with Debian's own packages.)
"""

from __future__ import annotations

import os
import subprocess
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.host_only(
    reason="it builds a venv of bookworm's versions from PyPI; under emulation Debian's own packages are the stack under test"
)

ROOT = Path(__file__).resolve().parents[1]
ENV_DIR = ROOT / ".cache" / "venv-bookworm-stack"
PINS = ["grpcio==1.51.3", "protobuf==4.21.12", "transitions==0.9.0", "psutil==5.9.4",
        "pyroute2==0.7.3", "cgroupspy==0.2.2", "cryptography==38.0.4", "pytest"]
INNER = "AOS_SM_OLDEST_STACK_RUN"


def _python() -> Path:
    python = ENV_DIR / "bin" / "python"
    marker = ENV_DIR / "pins.txt"
    if not marker.exists() or marker.read_text() != "\n".join(PINS):
        venv.create(ENV_DIR, with_pip=True, clear=True)
        install = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PINS],
            capture_output=True, text=True, timeout=900,
        )
        if install.returncode != 0:
            pytest.skip(f"cannot install the bookworm stack from the package index: {install.stderr[-400:]}")
        project = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--no-deps", "-e", str(ROOT)],
            capture_output=True, text=True, timeout=600,
        )
        assert project.returncode == 0, project.stderr
        marker.write_text("\n".join(PINS))
    return python


@pytest.mark.skipif(os.environ.get(INNER) == "1", reason="already inside the oldest-stack run")
def test_gateway_contract_and_core_tests_pass_on_the_bookworm_stack() -> None:
    python = _python()
    versions = subprocess.run(
        [str(python), "-c", "import grpc, google.protobuf as p, transitions as t; "
         "print(grpc.__version__, p.__version__, t.__version__)"],
        capture_output=True, text=True, timeout=60,
    )
    assert versions.stdout.split() == ["1.51.3", "4.21.12", "0.9.0"], versions.stderr
    result = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/agent", "tests/statemachine",
         "tests/test_wire_contract.py", "tests/test_contract_cm.py", "tests/test_nodeconfig.py",
         "tests/hw", "tests/iam"],
        cwd=ROOT, env={**os.environ, INNER: "1"}, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and " failed" not in result.stdout

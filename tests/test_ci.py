"""`.ci/run` must not go green on the host half alone: the arm64 half is required there."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _skip_decision(tmp_path: Path, required: bool) -> subprocess.CompletedProcess[str]:
    """arm64.sh's main with a setup that cannot register binfmt_misc, as on a host without it.

    The script is copied into an empty tree so its cache (and the mounts its exit trap sweeps)
    is the copy's, never a real run's."""
    (tmp_path / ".ci").mkdir()
    script = tmp_path / ".ci" / "arm64.sh"
    shutil.copy(ROOT / ".ci" / "arm64.sh", script)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    if required:
        env["AOS_SM_ARM64_REQUIRED"] = "1"
    return subprocess.run(["bash", "-c", 'source "$1"; setup() { return 1; }; main all', "_", str(script)],
                          env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash to run the CI script")
def test_without_binfmt_the_arm64_half_fails_when_required(tmp_path: Path) -> None:
    result = _skip_decision(tmp_path, required=True)
    assert result.returncode != 0
    assert "FAILED" in result.stderr and "binfmt_misc" in result.stderr


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash to run the CI script")
def test_without_binfmt_a_developer_run_skips_loudly(tmp_path: Path) -> None:
    result = _skip_decision(tmp_path, required=False)
    assert result.returncode == 0
    assert "SKIPPED the arm64 steps" in result.stderr


def test_ci_run_requires_the_arm64_half() -> None:
    calls = [line.split() for line in (ROOT / ".ci" / "run").read_text().splitlines()
             if ".ci/arm64.sh" in line and not line.lstrip().startswith("#")]
    assert calls, ".ci/run no longer runs the arm64 half"
    for words in calls:
        assert "AOS_SM_ARM64_REQUIRED=1" in words[:words.index(".ci/arm64.sh")], words


def test_shellcheck_finds_nothing_in_the_ci_scripts() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (Debian package shellcheck)")
    result = subprocess.run([shellcheck, str(ROOT / ".ci" / "run"), str(ROOT / ".ci" / "arm64.sh")],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout

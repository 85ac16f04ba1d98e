"""`aos-sm demo --iam` runs end to end: IAM identity, mTLS with IAM's certificate, a renewal."""

from __future__ import annotations

from pathlib import Path

import pytest

from aos_sm.agent.iam.demo import run_iam_demo


def test_iam_demo_registers_and_registers_again_after_the_renewal(capsys: pytest.CaptureFixture[str],
                                                                  tmp_path: Path) -> None:
    log_file = tmp_path / "demo.log"  # the demo keeps its log by design; not in /tmp after the test
    assert run_iam_demo(timeout=15.0, log_file=log_file) == 0
    out = capsys.readouterr().out
    assert str(log_file) in out and "aos_sm.agent" in log_file.read_text()
    assert "(IAM node info max_dmips)" in out and '"node_id": "iam-node-1"' in out
    assert "registered again with the renewed certificate" in out

"""`aos-sm demo --iam` runs end to end: IAM identity, mTLS with IAM's certificate, a renewal."""

from __future__ import annotations

import pytest

from aos_sm.agent.iam.demo import run_iam_demo


def test_iam_demo_registers_and_registers_again_after_the_renewal(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_iam_demo(timeout=15.0) == 0
    out = capsys.readouterr().out
    assert "(IAM node info max_dmips)" in out and '"node_id": "iam-node-1"' in out
    assert "registered again with the renewed certificate" in out

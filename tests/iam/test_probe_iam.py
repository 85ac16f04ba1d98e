"""`aos-sm probe` with IAM: IAM's node info beside the measured one, and the difference."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import Any, List, Tuple

from aos_sm.agent import probe_cmd
from aos_sm.agent.iam.sim import SimulatedIAM

BOARDS = Path(__file__).resolve().parents[1] / "data" / "boards"
RK3399_MEASURED = round(2 * 1800 * 4.9 + 4 * 1416 * 2.3)  # table cores: +-15 %


def probe(tmp_path: Path, iam: SimulatedIAM, *extra: str) -> Tuple[int, str, str]:
    config = tmp_path / "sm.json"
    config.write_text(json.dumps({"runtimes": [{"type": "runc"}], "caCert": str(iam.ca.cert_path),
                                  "iamPublicServerURL": iam.public_address}))
    parser = argparse.ArgumentParser()
    probe_cmd.add_arguments(parser)
    out, err = io.StringIO(), io.StringIO()
    argv: List[str] = ["--root", str(BOARDS / "rk3399"), "--config", str(config), *extra]
    code = probe_cmd.run(parser.parse_args(argv), out, err)
    return code, out.getvalue(), err.getvalue()


def test_json_puts_iams_figure_beside_the_measured_one(tmp_path: Path, iam: SimulatedIAM) -> None:
    iam.node_info.max_dmips = 29400
    code, out, _ = probe(tmp_path, iam, "--json")
    assert code == 0
    document: dict[str, Any] = json.loads(out)
    assert document["smInfo"]["nodeId"] == "iam-node-7"  # what `run` registers: IAM's identity
    dmips = document["iam"]["dmips"]
    assert (dmips["iamMaxDMIPS"], dmips["measuredDMIPS"]) == (29400, RK3399_MEASURED)
    assert dmips["differencePercent"] == round((RK3399_MEASURED - 29400) / 29400 * 100, 1)
    assert dmips["withinUncertainty"] is True and dmips["uncertaintyPercent"] == 15
    assert document["iam"]["nodeInfo"]["node_id"] == "iam-node-7"


def test_table_says_when_iams_figure_is_off_by_more_than_the_probe_can_be(tmp_path: Path, iam: SimulatedIAM) -> None:
    iam.node_info.max_dmips = 20000
    code, out, _ = probe(tmp_path, iam)
    assert code == 0
    (line,) = [row for row in out.splitlines() if row.split()[:1] == ["DMIPS"] and "differs" in row]
    assert line.split()[1:4] == ["20000", str(RK3399_MEASURED), f"{(RK3399_MEASURED - 20000) / 200:+.1f}%"]
    assert "differs by more than the probe's +-15%: fix IAM's nodeInfo.maxDMIPS" in line


def test_iam_away_is_said_and_the_probes_are_shown(tmp_path: Path, iam: SimulatedIAM) -> None:
    iam.stop()
    code, out, err = probe(tmp_path, iam, "--json")
    assert code == 0
    assert f"aos-sm probe: IAM at {iam.public_address}: UNAVAILABLE" in err
    document = json.loads(out)
    assert "iam" not in document and document["smInfo"]["nodeId"] == "0f3e5a7c9b1d4e2f8a6c4b2d0e9f7a5c"

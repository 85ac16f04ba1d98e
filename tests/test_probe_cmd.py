"""`aos-sm probe` over board fixture roots: the JSON object, the table, and problems on stderr."""

from __future__ import annotations

import argparse
import io
import json
import os
from pathlib import Path
from typing import Any, List, Tuple

import pytest
from runtime_checks import skip_unless_runc_registers

from aos_sm.agent import probe_cmd

BOARDS = Path(__file__).resolve().parent / "data" / "boards"


def _run(argv: List[str]) -> Tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    probe_cmd.add_arguments(parser)
    out, err = io.StringIO(), io.StringIO()
    code = probe_cmd.run(parser.parse_args(argv), out, err)
    return code, out.getvalue(), err.getvalue()


def _runc_only(tmp_path: Path, network: bool = False) -> str:
    """A config naming the runtime: without one the probe offers only runtimes installed on the
    host that runs the test (none on a machine without runc), and these tests are about capacity.
    The network prerequisites (a throwaway namespace) only where a test asks for them."""
    config = tmp_path / "runtimes.cfg"
    config.write_text(json.dumps({"runtimes": [{"type": "runc"}], "network": {"enabled": network}}))
    return str(config)


def test_json_object_for_rk3399_root(tmp_path: Path) -> None:
    code, out, err = _run(["--root", str(BOARDS / "rk3399"), "--config", _runc_only(tmp_path), "--json"])
    assert code == 0
    document: dict[str, Any] = json.loads(out)
    info = document["smInfo"]
    assert info["nodeId"] == "0f3e5a7c9b1d4e2f8a6c4b2d0e9f7a5c"  # the fixture's etc/machine-id
    runtime = info["runtimes"][0]
    assert int(runtime["maxDmips"]) == round(2 * 1800 * 4.9 + 4 * 1416 * 2.3)
    assert runtime["archInfo"] == {"architecture": "arm64", "variant": "v8"}  # GOARCH, as CM compares
    assert document["arch"] == {**runtime["archInfo"], "machine": "aarch64"}
    assert [r["name"] for r in info["resources"]] == ["serial", "dbus"]
    cpus = document["cpus"]
    assert [(c["part"], c["maxMHz"], c["capacity"]) for c in cpus] == [("0xd03", 1416, 381)] * 4 + [("0xd08", 1800, 1024)] * 2
    assert cpus[4]["dmips"] == round(1800 * 4.9, 1) and cpus[4]["provenance"] == "table"
    assert document["cgroups"]["mode"] == "hybrid"
    assert document["cgroups"]["limitedBy"] == {"cpu": "v1", "cpuset": "v1", "memory": "v1"}
    assert "'camera'" in err and "/dev/video0" in err and "'broken'" in err


def test_table_for_bring_up() -> None:
    code, out, _ = _run(["--root", str(BOARDS / "rpi3-nocpufreq")])
    assert code == 0
    assert "Cortex-A53" in out and "guess" in out and "estimate" in out
    assert f"max {round(4 * 600 * 2.3)}" in out


def test_config_file_settings_apply(tmp_path: Path) -> None:
    config = tmp_path / "aos_servicemanager.cfg"
    config.write_text(json.dumps({
        "nodeId": "board-1", "maxDMIPS": 20000, "cgroupParent": "/aos",
        "systemReserve": {"ramPercent": 50}, "runtimes": [{"type": "runc"}],
        "resourcesConfigFile": "/etc/aos/resources.cfg",
    }))
    code, out, _ = _run(["--root", str(BOARDS / "rk3399"), "--config", str(config), "--json"])
    assert code == 0
    runtime = json.loads(out)["smInfo"]["runtimes"][0]
    assert runtime["type"] == "runc"
    assert int(runtime["maxDmips"]) == 20000
    # Only RAM is reserved: no DMIPS budget (CM then schedules on maxDMIPS minus the load it sees).
    assert "allowedDmips" not in runtime
    assert int(runtime["allowedRam"]) == min(2 * 1024**3, int(runtime["totalRam"]) // 2)
    config.write_text(json.dumps({"maxDMIPS": 20000, "cgroupParent": "/aos", "systemReserve": {"dmipsPercent": 5}}))
    code, out, _ = _run(["--root", str(BOARDS / "rk3399"), "--config", str(config), "--json"])
    capacity = json.loads(out)["capacity"]
    # the /aos cpuset keeps the four A53s' share of the operator's figure
    share = (4 * 1416 * 2.3) / (2 * 1800 * 4.9 + 4 * 1416 * 2.3)
    assert capacity["allowedDMIPS"]["value"] == round(20000 * share)
    assert capacity["allowedRAM"] == {"value": 0, "source": "not reserved: CM uses total RAM minus the use it sees"}


def test_live_probe_json_reports_this_machine(tmp_path: Path) -> None:
    code, out, _ = _run(["--config", _runc_only(tmp_path), "--json"])
    assert code == 0
    document = json.loads(out)
    fs_types = {line.split(" - ")[1].split()[0] for line in Path("/proc/self/mountinfo").read_text().splitlines()}
    v1, v2 = "cgroup" in fs_types, "cgroup2" in fs_types
    assert document["cgroups"]["mode"] == ("hybrid" if v1 and v2 else "v1" if v1 else "v2" if v2 else "none")
    assert len(document["cpus"]) == sum(
        1 for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("processor")
    )
    if not document["smInfo"].get("runtimes"):
        skip_unless_runc_registers()
    runtime = document["smInfo"]["runtimes"][0]
    assert int(runtime["maxDmips"]) > 0
    memtotal_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                        if line.startswith("MemTotal:"))
    assert int(runtime["totalRam"]) == memtotal_kib * 1024


def test_the_config_check_names_what_cm_limits_leave_out(tmp_path: Path) -> None:
    resources = tmp_path / "resources.cfg"
    resources.write_text(json.dumps([{"name": f"res{i}"} for i in range(6)]))
    config = tmp_path / "sm.cfg"
    config.write_text(json.dumps({"resourcesConfigFile": str(resources), "cmReconnectMaxTimeout": "1m"}))
    code, out, err = _run(["--config", str(config), "--json"])
    assert code == 0
    document = json.loads(out)
    assert [r["name"] for r in document["smInfo"]["resources"]] == ["res0", "res1", "res2", "res3"]
    assert "aos-sm probe: SMInfo: resources 'res4', 'res5' left out: CM accepts at most 4 resources" in err
    assert document["cuts"] == ["resources 'res4', 'res5' left out: CM accepts at most 4 resources"]
    assert "aos-sm probe: config: cmReconnectMaxTimeout" in err


def test_a_root_that_does_not_exist_exits_2(tmp_path: Path) -> None:
    code, out, err = _run(["--root", str(tmp_path / "nowhere")])
    assert code == 2 and out == "" and "nowhere" in err


def test_a_probe_of_another_tree_does_not_claim_this_kernels_network_prerequisites(tmp_path: Path) -> None:
    code, out, err = _run(["--root", str(BOARDS / "rk3399"), "--config", _runc_only(tmp_path, network=True), "--json"])
    assert code == 0
    (why,) = json.loads(out)["networkPrerequisites"].values()
    assert why.startswith("not checked: --root") and "network:" not in err


@pytest.mark.system
def test_the_live_probe_tries_the_network_prerequisites_in_a_throwaway_namespace(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the network prerequisites need root (a throwaway network namespace)")
    code, out, err = _run(["--config", _runc_only(tmp_path, network=True), "--json"])
    assert code == 0
    found = json.loads(out)["networkPrerequisites"]
    from aos_sm.agent.network.prerequisites import FEATURES  # noqa: PLC0415

    assert list(found) == list(FEATURES), found
    assert found["bridge"] == "ok" and found["veth"] == "ok", found  # what every test namespace uses
    missing = [name for name, why in found.items() if why != "ok"]
    # Each missing feature is also one stderr line naming it (what an integrator reads first).
    assert all(f"network: {name} missing" in err for name in missing), err

"""The launcher inside the agent, against the contract CM (a real gRPC server answering
GetBlobsInfos) and a blob server on loopback; then the agent as a process killed with SIGKILL."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from launcher_helpers import remove_containers, wait_until
from contract_cm import CMFactory, ContractCM
from oci_fixture import BlobServer, build_image

from aos_sm.agent.app import build_agent
from aos_sm.agent.instancelog import parse_line
from aos_sm.agent.config import parse_config
from aos_sm.agent.launcher import container_id
from aos_sm.agent.ports import InstanceKey
from aos_sm.agent.sminfo import runtime_id

pytestmark = [pytest.mark.system, pytest.mark.usefixtures("system")]

NODE = "node-launcher-agent"
SERVICE = ["/bin/sh", "-c", "echo up; trap 'exit 0' TERM; sleep 1000 & wait"]
# Writes a line every 0.2 s: its output must keep flowing across an agent SIGKILL.
TICKER = ["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do echo tick; sleep 0.2; done"]


def agent_config(tmp_path: Path, address: str, cgroup_parent: str) -> Dict[str, Any]:
    (tmp_path / "work").mkdir(exist_ok=True)
    return {
        "nodeId": NODE, "cmServerURL": address, "network": {"enabled": False}, "tlsMode": "plaintext",
        "cmReconnectTimeout": "100ms", "cmReconnectMaxTimeout": "500ms",
        "workingDir": str(tmp_path / "work"), "resourcesConfigFile": str(tmp_path / "resources.cfg"),
        "runtimes": [{"type": "runc"}], "cgroupParent": cgroup_parent,
    }


def start_payload(digest: str, name: str, **extra: Any) -> Dict[str, Any]:
    return {"instance": {"itemId": name, "subjectId": "subj", "instance": "0"}, "version": "1.0.0",
            "manifestDigest": digest, "runtimeId": runtime_id("runc", NODE), **extra}


def cgroup_pids(cgroup_parent: str, name_prefix: str = "") -> Dict[str, List[int]]:
    """container cgroup name -> pids, under ``cgroup_parent`` in the memory hierarchy."""
    top = Path("/sys/fs/cgroup/memory") / cgroup_parent
    if not top.is_dir():
        return {}
    return {d.name: [int(p) for p in (d / "cgroup.procs").read_text().split()]
            for d in top.iterdir() if d.is_dir() and d.name.startswith(name_prefix)}


@pytest.fixture
def state_root(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "work" / "launcher" / "runtime" / "runc"
    yield root
    remove_containers(root)


def test_update_instances_over_grpc_activating_active_then_inactive(
    contract_cm: ContractCM, blob_server: BlobServer, layer: bytes, cgroup_parent: str,
    state_root: Path, tmp_path: Path
) -> None:
    image = build_image([layer], entrypoint=SERVICE[:2], cmd=SERVICE[2:], env=["GREETING=image"])
    contract_cm.blob_urls.update(blob_server.publish(image))
    agent = build_agent(parse_config(json.dumps(agent_config(tmp_path, contract_cm.address, cgroup_parent))))
    agent.start()
    try:
        session = contract_cm.wait_session(timeout=10)
        assert list(session.wait_for("node_instances_status", 10).instances) == []
        payload = start_payload(image.manifest_digest, "web", uid=2345, gid=5432,
                                envVars=[{"name": "GREETING", "value": "from-cm"}])
        session.send("update_instances", {"startInstances": [payload]})
        activating = session.wait_for("update_instances_status", 30)
        active = session.wait_for("update_instances_status", 30)
        assert [(s.instance.item_id, s.state) for s in activating.instances] == [("web", "activating")]
        assert [(s.instance.item_id, s.state, s.error.aos_code) for s in active.instances] == [("web", "active", 0)]
        assert [(v.name, v.error.aos_code) for v in active.instances[0].env_vars] == [("GREETING", 0)]
        batch = session.wait_for("node_instances_status", 30)
        assert [(s.instance.item_id, s.state) for s in batch.instances] == [("web", "active")]
        assert contract_cm.blob_requests and contract_cm.blob_requests[0] == [image.manifest_digest]

        ((container, pids),) = cgroup_pids(cgroup_parent).items()
        assert pids
        status = Path(f"/proc/{pids[0]}/status").read_text()
        assert "\nUid:\t2345\t2345" in status and "\nGid:\t5432\t5432" in status
        assert b"GREETING=from-cm" in Path(f"/proc/{pids[0]}/environ").read_bytes().split(b"\0")
        assert f"memory:/{cgroup_parent}/{container}" in Path(f"/proc/{pids[0]}/cgroup").read_text()

        session.send("update_instances", {"stopInstances": [payload["instance"]]})
        stopped = session.wait_for("update_instances_status", 30)
        assert [(s.instance.item_id, s.state) for s in stopped.instances] == [("web", "inactive")]
        assert list(session.wait_for("node_instances_status", 30).instances) == []
        assert all(not procs for procs in cgroup_pids(cgroup_parent).values())
    finally:
        agent.launcher.stop_all_instances()
        assert agent.stop(timeout=5.0)


def _run_agent(config: Path) -> "subprocess.Popen[str]":
    return subprocess.Popen([sys.executable, "-m", "aos_sm.agent.cli", "run", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "GRPC_ENABLE_FORK_SUPPORT": "false"})


def test_after_sigkill_running_instances_are_adopted_and_dead_ones_restarted_without_cm(
    contract_cm_factory: CMFactory, blob_server: BlobServer, layer: bytes, cgroup_parent: str,
    state_root: Path, tmp_path: Path
) -> None:
    image = build_image([layer], entrypoint=TICKER[:2], cmd=TICKER[2:])
    urls = blob_server.publish(image)
    cm = contract_cm_factory()
    cm.blob_urls.update(urls)
    config = tmp_path / "sm.json"
    config.write_text(json.dumps(agent_config(tmp_path, cm.address, cgroup_parent)))
    process = _run_agent(config)
    processes = [process]
    try:
        session = cm.wait_session(timeout=30)
        session.wait_for("node_instances_status", 30)
        session.send("update_instances", {"startInstances": [start_payload(image.manifest_digest, "kept"),
                                                             start_payload(image.manifest_digest, "lost")]})
        batch = session.wait_for("node_instances_status", 60)
        assert sorted((s.instance.item_id, s.state) for s in batch.instances) == [("kept", "active"), ("lost", "active")]
        before = cgroup_pids(cgroup_parent)
        assert len(before) == 2 and all(before.values())

        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        # While the agent is dead one instance dies too; the other keeps running.
        lost_container = container_id(cgroup_parent, InstanceKey("lost", "subj", 0))
        subprocess.run(["runc", "--root", str(state_root), "kill", lost_container, "KILL"], check=True, timeout=30)
        wait_until(lambda: not cgroup_pids(cgroup_parent)[lost_container], what="the lost instance to die")
        cm.stop()

        # The agent comes back with no CM to talk to: it adopts one and restarts the other.
        process = _run_agent(config)
        processes.append(process)
        wait_until(lambda: bool(cgroup_pids(cgroup_parent).get(lost_container)), 60, "the offline restart")
        after = cgroup_pids(cgroup_parent)
        kept_container = next(c for c in before if c != lost_container)
        # Adopted: the very same first process (the ticker's sleep children come and go).
        assert min(after[kept_container]) == min(before[kept_container])
        assert min(before[lost_container]) not in after[lost_container]
        # The adopted instance's output still reaches its log: its FIFO outlived the dead agent.
        log_file = tmp_path / "work" / "launcher" / "logs" / f"{kept_container}.log"
        restarted_at = datetime.now(timezone.utc)
        wait_until(lambda: any(parsed is not None and parsed[0] > restarted_at for parsed in
                               map(parse_line, log_file.read_bytes().splitlines(keepends=True))),
                   30, "output of the adopted instance")

        cm = contract_cm_factory(port=cm.port)
        session = cm.wait_session(timeout=30)
        first = session.wait_for("node_instances_status", 30)
        found = dict((s.instance.item_id, s.state) for s in first.instances)
        # The restarted one is confirmed active only after its start window (INSTANCES.md).
        assert found["kept"] == "active" and found["lost"] in ("activating", "active"), found
        if found["lost"] == "activating":
            session.wait_for("update_instances_status", 30, predicate=lambda update: any(
                (s.instance.item_id, s.state) == ("lost", "active") for s in update.instances))
        assert process.poll() is None
    finally:
        for running in processes:
            if running.poll() is None:
                running.kill()
            running.wait(timeout=10)
            stderr = running.stderr.read() if running.stderr else ""
            assert "Traceback" not in stderr, stderr



def test_the_launcher_feeds_the_monitor_and_the_logs_inside_the_agent(
    contract_cm: ContractCM, blob_server: BlobServer, layer: bytes, cgroup_parent: str,
    state_root: Path, tmp_path: Path
) -> None:
    """The parts wired together in agent/app.py: a running instance shows up in InstantMonitoring
    with its cgroup's ram; a crashing one gives `failed`, an InstanceAlert, and both its instance
    log and its crash log come back through CM's log requests."""
    service = build_image([layer], entrypoint=SERVICE[:2], cmd=SERVICE[2:])
    crasher = build_image([layer], entrypoint=["/bin/sh", "-c"], cmd=["echo about to fail; sleep 1; exit 3"])
    contract_cm.blob_urls.update(blob_server.publish(service))
    contract_cm.blob_urls.update(blob_server.publish(crasher))
    config = agent_config(tmp_path, contract_cm.address, cgroup_parent)
    config["monitoring"] = {"pollPeriod": "200ms", "averageWindow": "1s"}
    agent = build_agent(parse_config(json.dumps(config)))
    agent.start()
    try:
        session = contract_cm.wait_session(timeout=10)
        session.wait_for("node_instances_status", 10)
        session.send("update_instances", {"startInstances": [start_payload(service.manifest_digest, "steady"),
                                                             start_payload(crasher.manifest_digest, "crasher")]})
        session.wait_for("node_instances_status", 60)

        sample = session.wait_for("instant_monitoring", 30, lambda m: any(
            i.instance.item_id == "steady" and i.monitoring_data.ram > 0 for i in m.instances_monitoring))
        (steady,) = [i for i in sample.instances_monitoring if i.instance.item_id == "steady"]
        assert steady.runtime_id == runtime_id("runc", NODE)

        alert = session.wait_for("alert", 30, lambda m: m.HasField("instance_alert"))
        assert alert.instance_alert.instance.item_id == "crasher"
        failed = session.wait_for("update_instances_status", 30, lambda m: any(
            s.instance.item_id == "crasher" and s.state == "failed" for s in m.instances))
        assert failed.instances[0].error.exit_code == 3

        crasher_filter = {"itemId": "crasher", "subjectId": "subj", "instance": "0"}
        for kind, correlation in (("instance_log_request", "out-1"), ("instance_crash_log_request", "crash-1")):
            session.send(kind, {"correlationId": correlation, "filter": crasher_filter})
            part = session.wait_for("log", 30, lambda m, c=correlation: m.correlation_id == c)
            assert (part.status, part.part, part.part_count, part.error.aos_code) == ("ok", 1, 1, 0)
            assert b"about to fail" in gzip.decompress(part.data)
        # The crash log says which crash it is.
        assert b"exited with code 3" in gzip.decompress(part.data)
    finally:
        agent.launcher.stop_all_instances()
        assert agent.stop(timeout=5.0)


def test_inside_the_agent_the_cloud_status_from_cm_drives_the_offline_ttl(
    contract_cm: ContractCM, blob_server: BlobServer, layer: bytes, cgroup_parent: str,
    state_root: Path, tmp_path: Path
) -> None:
    from aos_sm.agent.launcher.store import LauncherStore

    config = {"runParameters": {"startInterval": "300ms"}, "offlineTTL": "2s"}
    image = build_image([layer], entrypoint=SERVICE[:2], cmd=SERVICE[2:], item_config=config)
    contract_cm.blob_urls.update(blob_server.publish(image))
    agent = build_agent(parse_config(json.dumps(agent_config(tmp_path, contract_cm.address, cgroup_parent))))
    agent.start()
    store = tmp_path / "work" / "launcher" / "launcher.db"
    try:
        session = contract_cm.wait_session(timeout=10)
        session.wait_for("node_instances_status", 10)
        session.send("connection_status", {"cloudStatus": "CONNECTED"})
        wait_until(lambda: LauncherStore(store).offline_since() is None, 10, "the offline clock to reset")
        session.send("update_instances", {"startInstances": [start_payload(image.manifest_digest, "ttl")]})
        batch = session.wait_for("node_instances_status", 30)
        assert [(s.instance.item_id, s.state) for s in batch.instances] == [("ttl", "active")]
        session.send("connection_status", {"cloudStatus": "DISCONNECTED"})
        session.wait_for("update_instances_status", 30, lambda m: any(
            (s.instance.item_id, s.state) == ("ttl", "inactive") for s in m.instances))
        assert LauncherStore(store).offline_since() is not None
        assert all(not procs for procs in cgroup_pids(cgroup_parent).values())
    finally:
        agent.launcher.stop_all_instances()
        assert agent.stop(timeout=5.0)

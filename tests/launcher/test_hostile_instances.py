"""Issue 12: hostile InstanceInfo values from CM, against the contract CM and real runc.

One batch mixes well-formed instances with refused ones: each refused one gets its own
``failed`` status with invalidArgument naming the field, the good ones start and become
``active``, NodeInstancesStatus follows, and the launcher's store holds only the good ones.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any, Dict, Iterator, Set, Tuple

import pytest

from contract_cm import ContractCM
from launcher_helpers import remove_containers
from oci_fixture import BlobServer, build_image

from aos_sm.agent.app import build_agent
from aos_sm.agent.config import parse_config
from aos_sm.agent.sminfo import runtime_id

pytestmark = [pytest.mark.system, pytest.mark.usefixtures("system")]

NODE = "node-hostile-instances"
SERVICE = ["/bin/sh", "-c", "trap 'exit 0' TERM; sleep 1000 & wait"]


@pytest.fixture
def state_root(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "work" / "launcher" / "runtime" / "runc"
    yield root
    remove_containers(root)


def instance(digest: str, item: str, subject: str = "subj", index: str = "0", **extra: Any) -> Dict[str, Any]:
    return {"instance": {"itemId": item, "subjectId": subject, "instance": index}, "version": "1.0.0",
            "manifestDigest": digest, "runtimeId": runtime_id("runc", NODE), **extra}


def stored_rows(work: Path) -> Set[Tuple[str, str, int]]:
    with sqlite3.connect(str(work / "launcher" / "launcher.db")) as db:
        return {(item, subject, index) for item, subject, index in
                db.execute("SELECT item_id, subject_id, instance FROM instances")}


def test_a_batch_with_bad_instances_starts_the_good_ones_and_reports_all(
    contract_cm: ContractCM, blob_server: BlobServer, layer: bytes, cgroup_parent: str,
    state_root: Path, tmp_path: Path
) -> None:
    image = build_image([layer], entrypoint=SERVICE[:2], cmd=SERVICE[2:])
    contract_cm.blob_urls.update(blob_server.publish(image))
    work = tmp_path / "work"
    work.mkdir()
    config = {"nodeId": NODE, "cmServerURL": contract_cm.address, "network": {"enabled": False}, "tlsMode": "plaintext",
              "cmReconnectTimeout": "100ms", "cmReconnectMaxTimeout": "500ms", "workingDir": str(work),
              "resourcesConfigFile": str(tmp_path / "resources.cfg"), "runtimes": [{"type": "runc"}],
              "cgroupParent": cgroup_parent}
    agent = build_agent(parse_config(json.dumps(config)))
    agent.start()
    digest = image.manifest_digest
    bad = {
        "huge-index": (instance(digest, "huge-index", index=str(2**64 - 1)), "instance.instance:"),
        "no-subject": (instance(digest, "no-subject", subject=""), "instance.subject_id: empty"),
        "bad-env": (instance(digest, "bad-env", envVars=[{"name": "A=B", "value": "x"}]), "env_vars[0].name:"),
        "escaping-path": (instance(digest, "escaping-path", storagePath="../etc"), "storage_path: '..' escapes"),
        "bad-rule": (instance(digest, "bad-rule", monitoringParameters={"alertRules": {
            "cpu": {"minThreshold": 50, "maxThreshold": 1e30}}}),
            "monitoring_parameters.alert_rules.cpu.max_threshold:"),
    }
    batch = [instance(digest, "good-a"), *(payload for payload, _ in bad.values()), instance(digest, "good-b")]
    try:
        session = contract_cm.wait_session(timeout=10)
        assert list(session.wait_for("node_instances_status", 10).instances) == []
        session.send("update_instances", {"startInstances": batch})
        nodes = session.wait_for("node_instances_status", 60)
        statuses = [s for update in session.messages("update_instances_status") for s in update.instances]
        by_item: Dict[str, list] = {}
        for status in statuses:
            by_item.setdefault(status.instance.item_id, []).append(status)

        for item, (_, field) in bad.items():
            (refused,) = by_item[item]
            assert (refused.state, refused.error.aos_code) == ("failed", 6), item
            assert refused.error.message.startswith(field), refused.error.message
        assert by_item["huge-index"][0].instance.instance == 2**64 - 1  # CM can match it
        for item in ("good-a", "good-b"):
            assert [s.state for s in by_item[item]] == ["activating", "active"], by_item[item]
        assert sorted((s.instance.item_id, s.state) for s in nodes.instances) == [
            ("good-a", "active"), ("good-b", "active")]
        assert stored_rows(work) == {("good-a", "subj", 0), ("good-b", "subj", 0)}

        # The stream stayed up: the next request is answered on the same session.
        session.send("get_node_config_status")
        assert session.wait_for("node_config_status", 10).state == "absent"
        assert len(contract_cm.sessions) == 1
    finally:
        agent.launcher.stop_all_instances()
        assert agent.stop(timeout=5.0)


def test_a_stop_with_an_index_beyond_int64_is_refused_and_the_rest_of_the_batch_goes_on(
    contract_cm: ContractCM, tmp_path: Path, cgroup_parent: str, state_root: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    config = {"nodeId": NODE, "cmServerURL": contract_cm.address, "network": {"enabled": False}, "tlsMode": "plaintext",
              "workingDir": str(work), "resourcesConfigFile": str(tmp_path / "resources.cfg"),
              "runtimes": [{"type": "runc"}], "cgroupParent": cgroup_parent}
    agent = build_agent(parse_config(json.dumps(config)))
    agent.start()
    try:
        session = contract_cm.wait_session(timeout=10)
        session.wait_for("node_instances_status", 10)
        huge = {"itemId": "x", "subjectId": "s", "instance": str(2**64 - 1)}
        plain = {"itemId": "y", "subjectId": "s", "instance": "3"}
        session.send("update_instances", {"stopInstances": [huge, plain]})
        session.wait_for("node_instances_status", 30)
        statuses = [s for update in session.messages("update_instances_status") for s in update.instances]
        assert sorted((s.instance.item_id, s.state, s.error.aos_code) for s in statuses) == [
            ("x", "inactive", 6), ("y", "inactive", 0)]
    finally:
        assert agent.stop(timeout=5.0)

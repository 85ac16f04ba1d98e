"""Restart policy, crash codes, offline TTL and parallel starts with real runc and cgroups."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
from pathlib import Path
from typing import Dict, List

import pytest

from launcher_helpers import RUNC_ID, PhaseLog, RecordingSender, quick_item_config
from oci_fixture import BlobServer, build_image

from aos_sm.agent.launcher import container_id
from aos_sm.agent.launcher.lifecycle import Phase
from aos_sm.agent.ports import InstanceKey
from aos_sm.proto.common.v2 import common_pb2
from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

pytestmark = [pytest.mark.system, pytest.mark.usefixtures("system")]

SERVICE = ["/bin/sh", "-c", "trap 'exit 0' TERM; sleep 1000 & wait"]


def resolver_for(urls: Dict[str, str]):  # type: ignore[no-untyped-def]
    def resolve(digests: List[str]) -> List[str]:
        return [urls[digest] for digest in digests]
    return resolve


def info(image_digest: str, name: str) -> sm_pb2.InstanceInfo:
    return sm_pb2.InstanceInfo(instance=common_pb2.InstanceIdent(item_id=name, subject_id="subj", instance=0),
                               version="1.0.0", manifest_digest=image_digest, runtime_id=RUNC_ID)


def statuses(sender: RecordingSender, name: str) -> List[sm_pb2.InstanceStatus]:
    return [s for s in sender.statuses() if s.instance.item_id == name]


def states(sender: RecordingSender, name: str) -> List[str]:
    return [s.state for s in statuses(sender, name)]


def key(name: str) -> InstanceKey:
    return InstanceKey(name, "subj", 0)


def test_a_service_that_exits_1_is_restarted_and_reaches_active_again(
    make_launcher, blob_server: BlobServer, layer: bytes
) -> None:
    image = build_image([layer], entrypoint=["/bin/sh", "-c"], cmd=["sleep 1; exit 1"],
                        item_config=quick_item_config())
    sender = RecordingSender()
    launcher = make_launcher(sender, resolver_for(blob_server.publish(image)))
    launcher.start()
    launcher.update_instances(sm_pb2.UpdateInstances(start_instances=[info(image.manifest_digest, "flaky")]))
    sender.wait(lambda s: states(s, "flaky")[:5] == ["activating", "active", "failed", "activating", "active"])
    crashed = statuses(sender, "flaky")[2]
    assert (crashed.error.aos_code, crashed.error.exit_code) == (2, 1), crashed.error
    assert "exited with code 1" in crashed.error.message
    assert statuses(sender, "flaky")[4].error.aos_code == 0  # active again, the error cleared
    assert "exited with code 1" in sender.of_kind("alert")[0].instance_alert.message


def test_four_crashes_within_start_interval_leave_it_failed_with_its_exit_status(
    make_launcher, blob_server: BlobServer, layer: bytes
) -> None:
    config = {"runParameters": {"startInterval": "30s", "startBurst": 4, "restartInterval": "50ms"}}
    image = build_image([layer], entrypoint=["/bin/sh", "-c"], cmd=["exit 7"], item_config=config)
    sender = RecordingSender()
    phases = PhaseLog()
    launcher = make_launcher(sender, resolver_for(blob_server.publish(image)), observer=phases)
    launcher.start()
    launcher.update_instances(sm_pb2.UpdateInstances(start_instances=[info(image.manifest_digest, "crasher")]))
    phases.wait(lambda p: Phase.Failed in p.get(key("crasher"), []))
    sender.wait(lambda s: len(s.of_kind("node_instances_status")) == 1)
    assert phases.phases[key("crasher")].count(Phase.Confirming) == 4  # four starts, no fifth
    assert len(sender.of_kind("alert")) == 4
    final = launcher.node_instances_status().instances[0]
    assert (final.state, final.error.aos_code, final.error.exit_code) == ("failed", 2, 7), final


def test_a_process_killed_by_sigkill_reports_exit_code_9(
    make_launcher, blob_server: BlobServer, layer: bytes, tmp_path: Path, cgroup_parent: str
) -> None:
    image = build_image([layer], entrypoint=SERVICE[:2], cmd=SERVICE[2:], item_config=quick_item_config())
    sender = RecordingSender()
    launcher = make_launcher(sender, resolver_for(blob_server.publish(image)))
    launcher.start()
    launcher.update_instances(sm_pb2.UpdateInstances(start_instances=[info(image.manifest_digest, "victim")]))
    sender.wait(lambda s: len(s.of_kind("node_instances_status")) == 1)
    assert states(sender, "victim") == ["activating", "active"]
    state_root = tmp_path / "work" / "launcher" / "runtime" / "runc"
    subprocess.run(["runc", "--root", str(state_root), "kill", container_id(cgroup_parent, key("victim")), "KILL"],
                   check=True, timeout=30)
    sender.wait(lambda s: "failed" in states(s, "victim"))
    killed = next(s for s in statuses(sender, "victim") if s.state == "failed")
    assert (killed.error.aos_code, killed.error.exit_code) == (2, 9), killed.error
    assert "killed by signal SIGKILL" in killed.error.message


def test_offline_ttl_stops_the_instance_with_a_ttl_and_keeps_the_other(
    make_launcher, blob_server: BlobServer, layer: bytes, tmp_path: Path, cgroup_parent: str
) -> None:
    with_ttl = build_image([layer], entrypoint=SERVICE[:2], cmd=SERVICE[2:],
                           item_config=quick_item_config(offlineTTL="2s"))
    without = build_image([layer], entrypoint=SERVICE[:2], cmd=SERVICE[2:] + ["# no ttl"],
                          item_config=quick_item_config())
    urls = {**blob_server.publish(with_ttl), **blob_server.publish(without)}
    sender = RecordingSender()
    launcher = make_launcher(sender, resolver_for(urls))
    launcher.start()
    launcher.on_cloud_connection(True)
    launcher.update_instances(sm_pb2.UpdateInstances(start_instances=[info(with_ttl.manifest_digest, "ttl"),
                                                                       info(without.manifest_digest, "forever")]))
    sender.wait(lambda s: len(s.of_kind("node_instances_status")) == 1)
    assert states(sender, "ttl") == ["activating", "active"]
    launcher.on_cloud_connection(False)
    sender.wait(lambda s: states(s, "ttl")[-1:] == ["inactive"], timeout=30)
    state_root = tmp_path / "work" / "launcher" / "runtime" / "runc"
    assert not (state_root / container_id(cgroup_parent, key("ttl"))).exists()  # the container is gone
    final = {s.instance.item_id: s.state for s in launcher.node_instances_status().instances}
    assert final == {"ttl": "inactive", "forever": "active"}
    forever = Path("/sys/fs/cgroup/memory") / cgroup_parent / container_id(cgroup_parent, key("forever"))
    assert (forever / "cgroup.procs").read_text().split()  # still running
    assert states(sender, "forever") == ["activating", "active"]


class HangingServer:
    """Accepts HTTP connections and never answers, until closed."""

    def __init__(self) -> None:
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(16)
        self._held: List[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def url(self, digest: str) -> str:
        return f"http://127.0.0.1:{self._socket.getsockname()[1]}/{digest.split(':', 1)[1]}"

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return
            self._held.append(connection)

    def close(self) -> None:
        # shutdown() first: close() alone does not wake the thread blocked in accept(), which
        # would then take the downloader's retries in and hang them too.
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)
        self._socket.close()
        for connection in self._held:
            connection.close()


def test_one_hanging_blob_server_does_not_delay_the_other_nine_starts(
    make_launcher, blob_server: BlobServer, layer: bytes
) -> None:
    image = build_image([layer], entrypoint=SERVICE[:2], cmd=SERVICE[2:], item_config=quick_item_config())
    stuck = build_image([layer], entrypoint=SERVICE[:2], cmd=SERVICE[2:] + ["# stuck"],
                        item_config=quick_item_config())
    hanging = HangingServer()
    urls = {**blob_server.publish(image), stuck.manifest_digest: hanging.url(stuck.manifest_digest)}
    sender = RecordingSender()
    launcher = make_launcher(sender, resolver_for(urls))
    launcher.start()
    try:
        starts = [info(image.manifest_digest, f"svc{i}") for i in range(9)]
        starts.insert(4, info(stuck.manifest_digest, "stuck"))
        launcher.update_instances(sm_pb2.UpdateInstances(start_instances=starts))
        sender.wait(lambda s: all(states(s, f"svc{i}")[-1:] == ["active"] for i in range(9)))
        assert states(sender, "stuck") == ["activating"]  # still pulling
        assert sender.of_kind("node_instances_status") == []  # the batch waits for it alone
    finally:
        hanging.close()
    sender.wait(lambda s: len(s.of_kind("node_instances_status")) == 1)
    final = {s.instance.item_id: s.state for s in sender.of_kind("node_instances_status")[0].instances}
    assert final == {**{f"svc{i}": "active" for i in range(9)}, "stuck": "failed"}


def test_the_offline_clock_survives_an_agent_restart(
    make_launcher, blob_server: BlobServer, layer: bytes
) -> None:
    import time

    image = build_image([layer], entrypoint=SERVICE[:2], cmd=SERVICE[2:],
                        item_config=quick_item_config(offlineTTL="60s"))
    urls = blob_server.publish(image)
    sender = RecordingSender()
    # The first agent started 100 s ago with the cloud away, as far as it knew.
    first = make_launcher(sender, resolver_for(urls), clock=lambda: time.time() - 100.0)
    first.start()
    first.update_instances(sm_pb2.UpdateInstances(start_instances=[info(image.manifest_digest, "ttl")]))
    sender.wait(lambda s: len(s.of_kind("node_instances_status")) == 1)
    assert states(sender, "ttl") == ["activating", "active"]  # 60 s TTL, 0 s offline by its clock
    first.stop()  # the container keeps running, as after an agent SIGKILL

    again = RecordingSender()
    second = make_launcher(again, resolver_for({}))
    second.start()
    # Had the restart reset the clock, the instance would run for another 60 s; the stored clock
    # says the cloud has been away 100 s: the adopted instance is stopped at once.
    again.wait(lambda s: states(s, "ttl")[-1:] == ["inactive"], timeout=30)
    assert [(s.instance.item_id, s.state) for s in second.node_instances_status().instances] == [("ttl", "inactive")]

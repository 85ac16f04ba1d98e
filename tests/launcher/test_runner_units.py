"""The launcher as a runner, without runc: batch failure policy, the store's named errors, the
offline clock in the store, and the cloud status feeding it."""

from __future__ import annotations

from pathlib import Path
from typing import List

import pytest

from launcher_helpers import RecordingSender

from aos_sm.agent.errors import Failed
from aos_sm.agent.launcher import Launcher, NullMonitor
from aos_sm.agent.launcher.store import LauncherStore, StoreError
from aos_sm.agent.ports import InstanceKey
from aos_sm.proto.common.v2 import common_pb2
from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2


def info(name: str, runtime: str = "no-such-runtime") -> sm_pb2.InstanceInfo:
    return sm_pb2.InstanceInfo(instance=common_pb2.InstanceIdent(item_id=name, subject_id="s", instance=0),
                               version="1.0.0", manifest_digest="sha256:" + "0" * 64, runtime_id=runtime)


def make(tmp_path: Path, sender: RecordingSender, now: List[float]) -> Launcher:
    def no_blobs(digests: List[str]) -> List[str]:
        raise AssertionError("nothing is pulled in these tests")

    return Launcher(sender=sender, working_dir=tmp_path, runtimes={}, resolver=no_blobs, monitor=NullMonitor(),
                    cgroup_parent="aos-sm-runner-unit", clock=lambda: now[0])


def test_when_the_store_cannot_save_a_batch_every_start_fails_with_why_and_the_batch_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sender = RecordingSender()
    launcher = make(tmp_path, sender, [1000.0])

    def disk_full(rows: object) -> None:
        raise StoreError("launcher store: saving instances: database or disk is full")

    monkeypatch.setattr(launcher._store, "put_instances", disk_full)
    launcher.start()
    try:
        launcher.update_instances(sm_pb2.UpdateInstances(start_instances=[info("a"), info("b"), info("c")]))
        sender.wait(lambda s: len(s.of_kind("node_instances_status")) == 1)
        final = sender.of_kind("node_instances_status")[0]
        assert sorted((s.instance.item_id, s.state) for s in final.instances) == [
            ("a", "failed"), ("b", "failed"), ("c", "failed")]
        assert all("disk is full" in s.error.message and s.error.aos_code == 1 for s in final.instances)
        assert {s.instance.item_id for s in sender.statuses() if s.state == "failed"} == {"a", "b", "c"}
    finally:
        launcher.stop()


def test_an_unknown_runtime_fails_the_start_and_a_stop_of_an_unknown_instance_is_inactive(tmp_path: Path) -> None:
    sender = RecordingSender()
    launcher = make(tmp_path, sender, [1000.0])
    launcher.start()
    try:
        launcher.update_instances(sm_pb2.UpdateInstances(start_instances=[info("a")],
                                                         stop_instances=[info("ghost").instance]))
        sender.wait(lambda s: len(s.of_kind("node_instances_status")) == 1)
        assert [(s.instance.item_id, s.state) for s in sender.statuses()] == [
            ("ghost", "inactive"), ("a", "activating"), ("a", "failed")]
        assert sender.statuses()[-1].error.aos_code == 5
        launcher.update_instances(sm_pb2.UpdateInstances(stop_instances=[info("a").instance]))
        sender.wait(lambda s: len(s.of_kind("node_instances_status")) == 2)
        assert sender.statuses()[-1].state == "inactive"
        assert list(sender.of_kind("node_instances_status")[-1].instances) == []
    finally:
        launcher.stop()


def test_the_offline_clock_is_stored_started_at_agent_start_and_reset_by_the_cloud(tmp_path: Path) -> None:
    now = [1000.0]
    launcher = make(tmp_path, RecordingSender(), now)
    launcher.start()  # the cloud is not known to be connected: the clock starts now
    store = tmp_path / "launcher" / "launcher.db"
    assert LauncherStore(store).offline_since() == 1000.0
    now[0] = 1050.0
    launcher.on_cloud_connection(False)  # already running: keeps its start
    assert launcher.wait_idle()
    assert LauncherStore(store).offline_since() == 1000.0
    launcher.on_cloud_connection(True)
    assert launcher.wait_idle()
    assert LauncherStore(store).offline_since() is None
    now[0] = 1100.0
    launcher.on_cloud_connection(False)
    assert launcher.wait_idle()
    assert LauncherStore(store).offline_since() == 1100.0
    launcher.stop()
    now[0] = 2000.0
    again = make(tmp_path, RecordingSender(), now)
    again.start()  # a restart keeps the stored start
    assert LauncherStore(store).offline_since() == 1100.0
    again.stop()


def test_the_store_raises_its_own_named_error(tmp_path: Path) -> None:
    store = LauncherStore(tmp_path / "launcher.db")
    store.put_instances([(InstanceKey("a", "s", 0), info("a"), "c-a")])
    assert list(store.instances()) == [InstanceKey("a", "s", 0)]
    store.close()
    with pytest.raises(StoreError, match="launcher store: saving instances") as caught:
        store.put_instance(InstanceKey("b", "s", 0), info("b"), "c-b")
    assert isinstance(caught.value, Failed) and caught.value.__cause__ is not None
    with pytest.raises(StoreError, match="reading the offline clock"):
        store.offline_since()


def test_an_image_whose_ttl_passed_while_offline_is_pulled_but_never_created(tmp_path: Path) -> None:
    from oci_fixture import build_image, script_layer

    layer = script_layer({"hello": b"hi"})
    image = build_image([layer], entrypoint=["/hello"], item_config={"offlineTTL": "2s"})
    served = tmp_path / "served"
    served.mkdir()
    urls = {}
    for digest, blob in image.blobs.items():
        (served / digest.split(":")[1]).write_bytes(blob)
        urls[digest] = (served / digest.split(":")[1]).as_uri()
    now = [1000.0]
    sender = RecordingSender()
    # "runc" is never run: the TTL stops the instance between its pull and its create.
    launcher = Launcher(sender=sender, working_dir=tmp_path / "work", runtimes={"rt": ("runc", "runc")},
                        resolver=lambda digests: [urls[d] for d in digests], monitor=NullMonitor(),
                        cgroup_parent="aos-sm-runner-unit", clock=lambda: now[0])
    launcher.start()  # the cloud is not known to be connected: offline since 1000
    try:
        now[0] = 1010.0
        late = info("late", runtime="rt")
        late.manifest_digest = image.manifest_digest
        launcher.update_instances(sm_pb2.UpdateInstances(start_instances=[late]))
        sender.wait(lambda s: len(s.of_kind("node_instances_status")) == 1)
        assert [s.state for s in sender.statuses()] == ["activating", "inactive"]
        assert not (tmp_path / "work" / "launcher" / "bundles").exists()  # no container was created
        assert [s.state for s in launcher.node_instances_status().instances] == ["inactive"]
    finally:
        launcher.stop()


def test_a_batch_that_breaks_before_its_plan_still_gives_every_instance_a_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aos_sm.agent.launcher import batches as launcher_module

    sender = RecordingSender()
    launcher = make(tmp_path, sender, [1000.0])

    def broken_plan(*args: object) -> None:
        raise RuntimeError("planner bug")

    monkeypatch.setattr(launcher_module, "plan_update", broken_plan)
    launcher.start()
    try:
        launcher.update_instances(sm_pb2.UpdateInstances(start_instances=[info("a"), info("b")],
                                                         stop_instances=[info("gone").instance]))
        sender.wait(lambda s: len(s.of_kind("node_instances_status")) == 1)
        reported = {(s.instance.item_id, s.state) for s in sender.statuses()}
        assert reported == {("gone", "inactive"), ("a", "failed"), ("b", "failed")}
        assert all("planner bug" in s.error.message for s in sender.statuses() if s.state == "failed")
        assert "planner bug" in sender.of_kind("alert")[0].core_alert.message
    finally:
        launcher.stop()


def test_the_periodic_sweep_drops_an_image_whose_layer_was_corrupted_on_disk(tmp_path: Path) -> None:
    import time

    from oci_fixture import build_image, script_layer

    from aos_sm.agent.launcher.blobs import BlobStore
    from aos_sm.agent.launcher.image import ImageStore

    layer = script_layer({"hello": b"hi"})
    image = build_image([layer], entrypoint=["/hello"])
    served = tmp_path / "served"
    served.mkdir()
    for digest, blob in image.blobs.items():
        (served / digest.split(":")[1]).write_bytes(blob)
    root = tmp_path / "work" / "launcher"
    store = ImageStore(root / "images", BlobStore(root / "blobs"))
    (layer_dir,) = store.pull(image.manifest_digest, lambda ds: [(served / d.split(":")[1]).as_uri() for d in ds]).layers
    (layer_dir / "hello").write_bytes(b"ho")  # bit rot on the image partition
    sender = RecordingSender()
    launcher = Launcher(sender=sender, working_dir=tmp_path / "work", runtimes={}, resolver=lambda ds: [],
                        monitor=NullMonitor(), cgroup_parent="aos-sm-runner-unit", sweep_period=0.2)
    launcher.start()
    try:
        deadline = time.monotonic() + 10
        while store.installed() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.installed() == [] and not layer_dir.exists()
    finally:
        launcher.stop()


class RecordingNetwork:
    """An InstanceNetworkPort that records what the launcher asks of it."""

    def __init__(self) -> None:
        self.calls: List[tuple] = []

    def attach(self, request: object, run: int) -> object:
        raise AssertionError("nothing is created in these tests")

    def detach(self, namespace: str, run: int) -> None:
        self.calls.append(("detach", namespace, run))

    def keep_only(self, namespaces: set) -> None:
        self.calls.append(("keep_only", frozenset(namespaces)))


def test_at_start_the_network_keeps_only_the_stored_instances_and_a_failed_start_detaches(tmp_path: Path) -> None:
    sender = RecordingSender()
    network = RecordingNetwork()
    launcher = Launcher(sender=sender, working_dir=tmp_path, runtimes={}, resolver=lambda d: [],
                        monitor=NullMonitor(), cgroup_parent="aos-sm-runner-unit", network=network)
    launcher.start()
    try:
        assert network.calls == [("keep_only", frozenset())]
        launcher.update_instances(sm_pb2.UpdateInstances(start_instances=[info("a")]))
        sender.wait(lambda s: len(s.of_kind("node_instances_status")) == 1)
        launcher.wait_idle()
        container = launcher._containers.container_id(InstanceKey("a", "s", 0))  # noqa: SLF001
        # The pull failed (no such runtime): the life cycle's Detach still runs, a no-op there.
        assert network.calls[1:] == [("detach", container, 1)]
    finally:
        launcher.stop()

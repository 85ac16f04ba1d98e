"""The launcher with runc on this machine: real images over HTTP, real containers and cgroups."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import pytest

from launcher_helpers import RUNC_ID, RecordingSender, wait_until
from oci_fixture import BlobServer, build_image

from aos_sm.agent.instancelog import parse_line
from aos_sm.agent.launcher.store import LauncherStore
from aos_sm.agent.ports import InstanceKey, MonitoredInstance
from aos_sm.proto.common.v2 import common_pb2
from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

pytestmark = [pytest.mark.system, pytest.mark.usefixtures("system")]

# A service that says who it is, then waits for SIGTERM (PID 1 ignores signals it has no handler for).
SERVICE = ["/bin/sh", "-c", "echo started as $(id -u):$(id -g) GREETING=$GREETING; trap 'exit 0' TERM; "
           "sleep 1000 & wait"]


def resolver_for(urls: Dict[str, str]):  # type: ignore[no-untyped-def]
    def resolve(digests: List[str]) -> List[str]:
        return [urls[digest] for digest in digests]
    return resolve


def info(image_digest: str, name: str = "svc", instance: int = 0, runtime: str = RUNC_ID,
         **fields: object) -> sm_pb2.InstanceInfo:
    return sm_pb2.InstanceInfo(
        instance=common_pb2.InstanceIdent(item_id=name, subject_id="subj", instance=instance),
        version="1.0.0", manifest_digest=image_digest, runtime_id=runtime, **fields)  # type: ignore[arg-type]


def states(sender: RecordingSender, name: str) -> List[str]:
    return [s.state for s in sender.statuses() if s.instance.item_id == name]


def proc_status(pid: int, field: str) -> List[str]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return line.split()[1:]
    raise AssertionError(f"no {field} in /proc/{pid}/status")


class RecordingMonitor:
    def __init__(self) -> None:
        self.events: List[object] = []

    def register_instance(self, instance: MonitoredInstance) -> None:
        self.events.append(instance)

    def unregister_instance(self, key: InstanceKey) -> None:
        self.events.append(key)


def test_start_runs_the_image_as_the_given_user_in_its_cgroup_then_stop(
    make_launcher, blob_server: BlobServer, layer: bytes, cgroup_parent: str, tmp_path: Path
) -> None:
    image = build_image([layer], entrypoint=SERVICE[:2], cmd=SERVICE[2:], env=["GREETING=image"])
    sender = RecordingSender()
    monitor = RecordingMonitor()
    launcher = make_launcher(sender, resolver_for(blob_server.publish(image)), monitor=monitor)
    launcher.start()
    # CM sends the paths relative; the launcher joins them to <workingDir>/storages and /states.
    storage = tmp_path / "work" / "storages" / "svc" / "subj" / "0"
    state_file = tmp_path / "work" / "states" / "svc" / "subj" / "0" / "state.dat"
    rules = sm_pb2.MonitoringParameters()
    rules.alert_rules.ram.min_threshold = 10.0
    request = info(image.manifest_digest, uid=1234, gid=4321, storage_path="svc/subj/0",
                   state_path="svc/subj/0/state.dat", monitoring_parameters=rules,
                   env_vars=[sm_pb2.EnvVarInfo(name="GREETING", value="cm")])
    launcher.update_instances(sm_pb2.UpdateInstances(start_instances=[request]))
    sender.wait(lambda s: len(s.of_kind("node_instances_status")) == 1)
    assert states(sender, "svc") == ["activating", "active"], sender.statuses()
    assert sender.statuses()[-1].error.aos_code == 0

    (log_file,) = launcher.instance_logs()
    assert log_file.key == InstanceKey("svc", "subj", 0)
    cgroup_dir = Path("/sys/fs/cgroup/memory") / log_file.cgroup
    assert log_file.cgroup.startswith(cgroup_parent + "/")
    pids = [int(p) for p in (cgroup_dir / "cgroup.procs").read_text().split()]
    assert pids, f"nothing runs in {cgroup_dir}"
    assert proc_status(pids[0], "Uid")[:2] == ["1234", "1234"]
    assert proc_status(pids[0], "Gid")[:2] == ["4321", "4321"]
    environ = Path(f"/proc/{pids[0]}/environ").read_bytes().split(b"\0")
    assert b"GREETING=cm" in environ
    wait_until(lambda: log_file.path.exists() and b"started as" in log_file.path.read_bytes(), what="output")
    stamped = [parse_line(line) for line in log_file.path.read_bytes().splitlines(keepends=True)]
    assert stamped[0] is not None and stamped[0][1] == b"started as 1234:4321 GREETING=cm\n"
    assert storage.is_dir() and state_file.is_file()
    (registered,) = monitor.events
    assert isinstance(registered, MonitoredInstance)
    assert (registered.key, registered.runtime_id, registered.cgroup) == (log_file.key, RUNC_ID, log_file.cgroup)
    assert registered.monitoring_parameters.alert_rules.ram.min_threshold == 10.0
    assert registered.partitions == (("storages", storage), ("states", state_file))

    launcher.update_instances(sm_pb2.UpdateInstances(stop_instances=[request.instance]))
    sender.wait(lambda s: len(s.of_kind("node_instances_status")) == 2)
    assert states(sender, "svc") == ["activating", "active", "inactive"]
    assert monitor.events[1:] == [log_file.key]
    assert list(sender.of_kind("node_instances_status")[-1].instances) == []
    assert not cgroup_dir.exists() or not (cgroup_dir / "cgroup.procs").read_text().split()


def test_a_tampered_layer_fails_with_invalid_checksum_and_leaves_nothing(
    make_launcher, blob_server: BlobServer, layer: bytes, tmp_path: Path
) -> None:
    image = build_image([layer], entrypoint=SERVICE[:2], cmd=SERVICE[2:])
    (layer_digest,) = image.layer_digests
    sender = RecordingSender()
    launcher = make_launcher(sender, resolver_for(blob_server.publish(image, tamper=layer_digest)))
    launcher.start()
    launcher.update_instances(sm_pb2.UpdateInstances(start_instances=[info(image.manifest_digest)]))
    sender.wait(lambda s: len(s.of_kind("node_instances_status")) == 1)
    failed = sender.statuses()[-1]
    assert (failed.state, failed.error.aos_code) == ("failed", 10), failed
    assert layer_digest in failed.error.message
    # CM keeps 64 characters of the message: the cause comes before the 71-character digest.
    assert failed.error.message.startswith("checksum mismatch"), failed.error.message
    store = tmp_path / "work" / "launcher"
    assert not (store / "blobs" / "sha256" / layer_digest.split(":")[1]).exists()
    assert list((store / "blobs" / "partial").iterdir()) == []
    assert sorted((store / "images").rglob("*")) == [store / "images" / "images", store / "images" / "layers"]
    # The failed instance stays listed until CM stops it.
    assert [s.state for s in sender.of_kind("node_instances_status")[-1].instances] == ["failed"]


def test_an_unknown_runtime_id_fails(make_launcher, blob_server: BlobServer, layer: bytes) -> None:
    image = build_image([layer], entrypoint=SERVICE[:2], cmd=SERVICE[2:])
    sender = RecordingSender()
    launcher = make_launcher(sender, resolver_for(blob_server.publish(image)))
    launcher.start()
    request = info(image.manifest_digest, runtime="00000000-0000-3000-8000-000000000000")
    launcher.update_instances(sm_pb2.UpdateInstances(start_instances=[request]))
    sender.wait(lambda s: len(s.of_kind("node_instances_status")) == 1)
    failed = sender.statuses()[-1]
    assert (failed.state, failed.error.aos_code) == ("failed", 5)
    assert "runtime" in failed.error.message


def test_a_crash_is_failed_with_its_code_an_instance_alert_and_a_crash_record(
    make_launcher, blob_server: BlobServer, layer: bytes
) -> None:
    # startBurst 1: the first crash is final (restarts: tests/launcher/test_lifecycle_runc.py).
    image = build_image([layer], entrypoint=["/bin/sh", "-c"], cmd=["echo about to fail; sleep 1; exit 3"],
                        item_config={"runParameters": {"startInterval": "300ms", "startBurst": 1}})
    sender = RecordingSender()
    launcher = make_launcher(sender, resolver_for(blob_server.publish(image)))
    launcher.start()
    launcher.update_instances(sm_pb2.UpdateInstances(start_instances=[info(image.manifest_digest, "crasher")]))
    sender.wait(lambda s: len(s.of_kind("alert")) == 1 and len(states(s, "crasher")) == 3)
    assert states(sender, "crasher") == ["activating", "active", "failed"]
    failed = sender.statuses()[-1]
    assert (failed.error.aos_code, failed.error.exit_code) == (2, 3)
    assert "exited with code 3" in failed.error.message
    alert = sender.of_kind("alert")[0].instance_alert
    assert (alert.instance.item_id, alert.service_version) == ("crasher", "1.0.0")
    assert "exited with code 3" in alert.message
    (crash,) = launcher.crashes()
    assert crash.key == InstanceKey("crasher", "subj", 0) and crash.started_at <= crash.crashed_at
    lines = [parse_line(line) for line in crash.log_path.read_bytes().splitlines(keepends=True)]
    assert any(line is not None and line[1] == b"about to fail\n" and crash.started_at <= line[0] <= crash.crashed_at
               for line in lines)
    assert [s.state for s in launcher.node_instances_status().instances] == ["failed"]


def test_commands_during_a_batch_are_queued_and_unchanged_instances_are_untouched(
    make_launcher, blob_server: BlobServer, layer: bytes
) -> None:
    image = build_image([layer], entrypoint=SERVICE[:2], cmd=SERVICE[2:])
    sender = RecordingSender()
    launcher = make_launcher(sender, resolver_for(blob_server.publish(image)))
    launcher.start()
    first, second = info(image.manifest_digest, "one"), info(image.manifest_digest, "two")
    launcher.update_instances(sm_pb2.UpdateInstances(start_instances=[first]))
    launcher.update_instances(sm_pb2.UpdateInstances(start_instances=[first, second]))
    changed = info(image.manifest_digest, "two", env_vars=[sm_pb2.EnvVarInfo(name="A", value="b")])
    launcher.update_instances(sm_pb2.UpdateInstances(start_instances=[changed]))
    sender.wait(lambda s: len(s.of_kind("node_instances_status")) == 3)
    assert states(sender, "one") == ["activating", "active", "active"]  # the second batch kept it running
    # Restarted on change: stopped (inactive), then started (INSTANCES.md "Statuses").
    assert states(sender, "two") == ["activating", "active", "inactive", "activating", "active"]
    final = sender.of_kind("node_instances_status")[-1]
    assert sorted((s.instance.item_id, s.state) for s in final.instances) == [("one", "active"), ("two", "active")]


def test_a_new_launcher_adopts_running_instances_from_the_store(
    make_launcher, blob_server: BlobServer, layer: bytes
) -> None:
    image = build_image([layer], entrypoint=SERVICE[:2], cmd=SERVICE[2:])
    urls = blob_server.publish(image)
    sender = RecordingSender()
    first = make_launcher(sender, resolver_for(urls))
    first.start()
    first.update_instances(sm_pb2.UpdateInstances(start_instances=[info(image.manifest_digest)]))
    sender.wait(lambda s: len(s.of_kind("node_instances_status")) == 1)
    first.stop()  # the worker ends; the container keeps running, as after an agent SIGKILL
    (log_file,) = first.instance_logs()
    pids = (Path("/sys/fs/cgroup/memory") / log_file.cgroup / "cgroup.procs").read_text().split()

    again = RecordingSender()
    second = make_launcher(again, resolver_for({}))  # no CM: nothing can be pulled
    second.start()
    assert [(s.instance.item_id, s.state) for s in second.node_instances_status().instances] == [("svc", "active")]
    # Adopted: the container's first process is the very same (its children may come and go:
    # right after start the shell may still be forking its sleep).
    after = (Path("/sys/fs/cgroup/memory") / log_file.cgroup / "cgroup.procs").read_text().split()
    assert min(map(int, after)) == min(map(int, pids))
    second.update_instances(sm_pb2.UpdateInstances(stop_instances=[info(image.manifest_digest).instance]))
    again.wait(lambda s: len(s.of_kind("node_instances_status")) == 1)
    assert states(again, "svc") == ["inactive"]


def test_an_entrypoint_the_runtime_cannot_exec_fails_with_its_message(
    make_launcher, blob_server: BlobServer, layer: bytes, tmp_path: Path
) -> None:
    image = build_image([layer], entrypoint=["/bin/no-such-program"])
    sender = RecordingSender()
    launcher = make_launcher(sender, resolver_for(blob_server.publish(image)))
    launcher.start()
    launcher.update_instances(sm_pb2.UpdateInstances(start_instances=[info(image.manifest_digest, "broken")]))
    sender.wait(lambda s: len(s.of_kind("node_instances_status")) == 1)
    failed = sender.statuses()[-1]
    assert (failed.state, failed.error.aos_code) == ("failed", 1)
    assert "no-such-program" in failed.error.message, failed.error.message
    # Cause first (CM keeps 64 characters); the 64-character container id comes last.
    assert failed.error.message.startswith("runc run exited 1: "), failed.error.message
    assert list((tmp_path / "work" / "launcher" / "runtime" / "runc").iterdir()) == []  # nothing half-created


def test_a_corrupt_store_is_reported_to_cm_and_the_launcher_still_works(
    make_launcher, blob_server: BlobServer, layer: bytes, tmp_path: Path
) -> None:
    (tmp_path / "work" / "launcher").mkdir(parents=True)
    (tmp_path / "work" / "launcher" / "launcher.db").write_bytes(b"garbage" * 1000)
    image = build_image([layer], entrypoint=SERVICE[:2], cmd=SERVICE[2:])
    sender = RecordingSender()
    launcher = make_launcher(sender, resolver_for(blob_server.publish(image)))
    launcher.start()
    assert "unreadable" in sender.of_kind("alert")[0].core_alert.message
    launcher.update_instances(sm_pb2.UpdateInstances(start_instances=[info(image.manifest_digest)]))
    sender.wait(lambda s: len(s.of_kind("node_instances_status")) == 1)
    assert states(sender, "svc") == ["activating", "active"]


def test_with_image_ttl_zero_a_stopped_instances_image_and_blobs_are_removed(
    make_launcher, blob_server: BlobServer, layer: bytes, tmp_path: Path
) -> None:
    image = build_image([layer], entrypoint=SERVICE[:2], cmd=SERVICE[2:])
    sender = RecordingSender()
    launcher = make_launcher(sender, resolver_for(blob_server.publish(image)), image_ttl=0.0)
    launcher.start()
    request = info(image.manifest_digest)
    launcher.update_instances(sm_pb2.UpdateInstances(start_instances=[request]))
    sender.wait(lambda s: len(s.of_kind("node_instances_status")) == 1)
    store = tmp_path / "work" / "launcher"
    assert len(list((store / "images" / "images").iterdir())) == 1  # in use: kept whatever the TTL
    assert len(list((store / "images" / "layers").iterdir())) == 2  # the layer and its record
    assert len(list((store / "blobs" / "sha256").iterdir())) == 2  # manifest, config: the layer blob is gone
    launcher.update_instances(sm_pb2.UpdateInstances(stop_instances=[request.instance]))
    sender.wait(lambda s: len(s.of_kind("node_instances_status")) == 2)
    assert launcher.wait_idle()  # collection runs after the batch's reply
    assert list((store / "images" / "images").iterdir()) == []
    assert list((store / "images" / "layers").iterdir()) == []
    assert list((store / "blobs" / "sha256").iterdir()) == []


def test_a_container_no_stored_instance_owns_is_removed_at_start(
    make_launcher, blob_server: BlobServer, layer: bytes, tmp_path: Path
) -> None:
    image = build_image([layer], entrypoint=SERVICE[:2], cmd=SERVICE[2:])
    sender = RecordingSender()
    first = make_launcher(sender, resolver_for(blob_server.publish(image)))
    first.start()
    request = info(image.manifest_digest)
    first.update_instances(sm_pb2.UpdateInstances(start_instances=[request]))
    sender.wait(lambda s: len(s.of_kind("node_instances_status")) == 1)
    first.stop()
    (log_file,) = first.instance_logs()
    # The agent died after CM's stop reached the store but before the container was removed.
    LauncherStore(tmp_path / "work" / "launcher" / "launcher.db").remove_instance(log_file.key)

    second = make_launcher(RecordingSender(), resolver_for({}))
    second.start()
    assert list(second.node_instances_status().instances) == []
    assert list((tmp_path / "work" / "launcher" / "runtime" / "runc").iterdir()) == []
    procs = Path("/sys/fs/cgroup/memory") / log_file.cgroup / "cgroup.procs"
    assert not procs.exists() or procs.read_text().split() == []

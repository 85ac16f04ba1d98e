"""The launcher with runc on this machine: real images over HTTP, real containers and cgroups."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import pytest

from conftest import RUNC_ID, RecordingSender
from oci_fixture import BlobServer, build_image

from aos_sm.agent.instancelog import parse_line
from aos_sm.agent.ports import InstanceKey
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


def test_start_runs_the_image_as_the_given_user_in_its_cgroup_then_stop(
    make_launcher, blob_server: BlobServer, layer: bytes, cgroup_parent: str, tmp_path: Path
) -> None:
    image = build_image([layer], entrypoint=SERVICE[:2], cmd=SERVICE[2:], env=["GREETING=image"])
    sender = RecordingSender()
    launcher = make_launcher(sender, resolver_for(blob_server.publish(image)))
    launcher.start()
    storage = tmp_path / "storage"
    request = info(image.manifest_digest, uid=1234, gid=4321, storage_path=str(storage),
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
    sender.wait(lambda s: log_file.path.exists() and b"started as" in log_file.path.read_bytes())
    stamped = [parse_line(line) for line in log_file.path.read_bytes().splitlines(keepends=True)]
    assert stamped[0] is not None and stamped[0][1] == b"started as 1234:4321 GREETING=cm\n"
    assert storage.is_dir()

    launcher.update_instances(sm_pb2.UpdateInstances(stop_instances=[request.instance]))
    sender.wait(lambda s: len(s.of_kind("node_instances_status")) == 2)
    assert states(sender, "svc") == ["activating", "active", "inactive"]
    assert list(sender.of_kind("node_instances_status")[-1].instances) == []
    assert not cgroup_dir.exists() or not (cgroup_dir / "cgroup.procs").read_text().split()

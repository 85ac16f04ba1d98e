"""Item config quotas and resources with runc on this machine: real cgroups, real device nodes."""

from __future__ import annotations

import json
import os
import stat
import uuid
from pathlib import Path
from typing import Dict, List

import pytest

from launcher_helpers import RUNC_ID, RecordingSender, wait_until
from oci_fixture import BlobServer, build_image

from aos_sm.agent.instancelog import parse_line
from aos_sm.agent.launcher.bundle import CpuCapacity
from aos_sm.agent.launcher.resources import HostResources
from aos_sm.proto.common.v2 import common_pb2
from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

pytestmark = [pytest.mark.system, pytest.mark.usefixtures("system")]

# Prints what it sees, then waits for SIGTERM. Applets other than the layer's links run through busybox.
KEEP_RUNNING = "echo DONE; trap 'exit 0' TERM; sleep 1000 & wait"
NODE_CPU = CpuCapacity(max_dmips=10000, cores=2)


def resolver_for(urls: Dict[str, str]):  # type: ignore[no-untyped-def]
    def resolve(digests: List[str]) -> List[str]:
        return [urls[digest] for digest in digests]
    return resolve


def info(image_digest: str, name: str, **fields: object) -> sm_pb2.InstanceInfo:
    return sm_pb2.InstanceInfo(
        instance=common_pb2.InstanceIdent(item_id=name, subject_id="subj", instance=1),
        version="1.0.0", manifest_digest=image_digest, runtime_id=RUNC_ID, **fields)  # type: ignore[arg-type]


def output_lines(launcher, name: str) -> List[str]:  # type: ignore[no-untyped-def]
    (log_file,) = [f for f in launcher.instance_logs() if f.key.item_id == name]
    wait_until(lambda: log_file.path.exists() and b"DONE" in log_file.path.read_bytes(), what=f"{name}'s output")
    lines = []
    for raw in log_file.path.read_bytes().splitlines(keepends=True):
        parsed = parse_line(raw)
        assert parsed is not None, raw
        lines.append(parsed[1].decode().rstrip("\n"))
    return lines


def cgroup_file(relative: str, v1_controller: str, v1_name: str, v2_name: str) -> str:
    """A cgroup control file of the instance, on cgroup v1 or v2."""
    v1 = Path("/sys/fs/cgroup") / v1_controller / relative / v1_name
    if v1.exists():
        return v1.read_text().strip()
    return (Path("/sys/fs/cgroup") / relative / v2_name).read_text().strip()


def started(sender: RecordingSender, name: str) -> sm_pb2.InstanceStatus:
    sender.wait(lambda s: any(x.instance.item_id == name and x.state in ("active", "failed") for x in s.statuses()))
    return [x for x in sender.statuses() if x.instance.item_id == name][-1]


def test_every_quota_of_the_item_config_is_applied(make_launcher, blob_server: BlobServer, layer: bytes) -> None:
    item_config = {
        "hostname": "quota-svc",
        "sysctl": {"kernel.msgmax": "12345"},
        "quotas": {"cpuDMIPSLimit": 2500, "ramLimit": 48 * 1024 * 1024, "pidsLimit": 40, "noFileLimit": 333,
                   "tmpLimit": 5 * 1024 * 1024},
    }
    script = ("echo NOFILE=$(ulimit -n); echo NPROC=$(ulimit -u); echo HOST=$(busybox hostname); "
              "echo MSGMAX=$(cat /proc/sys/kernel/msgmax); busybox df -k /tmp; env; " + KEEP_RUNNING)
    image = build_image([layer], entrypoint=["/bin/sh", "-c"], cmd=[script], env=["FROM_IMAGE=yes"],
                        item_config=item_config)
    sender = RecordingSender()
    launcher = make_launcher(sender, resolver_for(blob_server.publish(image)), cpu=NODE_CPU)
    launcher.start()
    launcher.update_instances(sm_pb2.UpdateInstances(start_instances=[info(image.manifest_digest, "quota", uid=1000,
                                                                                gid=1000)]))
    status = started(sender, "quota")
    assert (status.state, status.error.message) == ("active", "")

    (log_file,) = launcher.instance_logs()
    # 2500 DMIPS x 100000 us x 2 cores / 10000 DMIPS = 50000 us per 100000 us period.
    assert cgroup_file(log_file.cgroup, "cpu", "cpu.cfs_quota_us", "cpu.max").split()[0] == "50000"
    assert cgroup_file(log_file.cgroup, "cpu", "cpu.cfs_period_us", "cpu.max").split()[-1] == "100000"
    assert cgroup_file(log_file.cgroup, "memory", "memory.limit_in_bytes", "memory.max") == str(48 * 1024 * 1024)
    assert cgroup_file(log_file.cgroup, "pids", "pids.max", "pids.max") == "40"

    lines = output_lines(launcher, "quota")
    assert "NOFILE=333" in lines and "NPROC=40" in lines
    assert "HOST=quota-svc" in lines and "MSGMAX=12345" in lines
    (tmp_line,) = [line for line in lines if line.endswith(" /tmp")]
    assert tmp_line.split()[1] == "5120", tmp_line  # 1K-blocks of a 5 MiB tmpfs
    env = dict(line.split("=", 1) for line in lines if "=" in line and line.split("=", 1)[0].isupper())
    assert env["AOS_ITEM_ID"] == "quota" and env["AOS_SUBJECT_ID"] == "subj" and env["AOS_INSTANCE_INDEX"] == "1"
    assert env["AOS_INSTANCE_ID"] == str(uuid.uuid3(uuid.NAMESPACE_OID, "quota:subj:1"))
    assert env["TERM"] == "xterm" and env["FROM_IMAGE"] == "yes"


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A probe root with a group and a usable device node (fuse, 10:229: opening it needs no
    capability), and a directory to mount holding a device the instance is not granted
    (loop-control, 10:237) and a plain file."""
    root = tmp_path / "host"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "group").write_text("root:x:0:\naosgrp:x:4242:\n")
    (root / "dev").mkdir()
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "hello").write_text("hello from the host\n")
    for path, device in ((root / "dev" / "granted", (10, 229)), (shared / "other", (10, 237))):
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(*device))
        os.chmod(path, 0o666)
    return root


def test_a_resource_gives_a_device_a_group_a_mount_and_an_env(
    make_launcher, blob_server: BlobServer, layer: bytes, host: Path, tmp_path: Path
) -> None:
    config = tmp_path / "resources.cfg"
    config.write_text(json.dumps([
        {"name": "fusebox", "groups": ["aosgrp"], "devices": ["/dev/granted:/dev/aos-fuse:rw"],
         "envs": ["RES_VAR=from-resource"],
         "mounts": [{"destination": "/mnt/shared", "type": "bind", "source": str(tmp_path / "shared"),
                     "options": ["rbind", "rw"]}]},
        {"name": "broken", "devices": ["/dev/not-here"]},
    ]))
    script = ("echo GROUPS=$(id -G); echo RES_VAR=$RES_VAR; ls -l /dev/aos-fuse; cat /mnt/shared/hello; "
              "(exec 3<>/dev/aos-fuse && echo GRANTED=open) 2>&1; "
              "(exec 4</mnt/shared/other && echo OTHER=open) 2>&1 | busybox sed 's/^.*: /OTHER=/'; " + KEEP_RUNNING)
    image = build_image([layer], entrypoint=["/bin/sh", "-c"], cmd=[script],
                        item_config={"resources": [{"name": "fusebox", "mode": "rw"}]})
    unknown = build_image([layer], entrypoint=["/bin/sh", "-c"], cmd=["true"], item_config={"resources": ["nope"]})
    broken = build_image([layer], entrypoint=["/bin/sh", "-c"], cmd=["true"], item_config={"resources": ["broken"]})
    urls = {**blob_server.publish(image), **blob_server.publish(unknown), **blob_server.publish(broken)}
    sender = RecordingSender()
    launcher = make_launcher(sender, resolver_for(urls), resources=HostResources(config, host))
    launcher.start()
    launcher.update_instances(sm_pb2.UpdateInstances(start_instances=[
        info(image.manifest_digest, "res", uid=1000, gid=1000), info(unknown.manifest_digest, "unknown"),
        info(broken.manifest_digest, "broken")]))
    sender.wait(lambda s: len(s.of_kind("node_instances_status")) == 1)

    assert started(sender, "res").state == "active"
    lines = output_lines(launcher, "res")
    assert any(line.startswith("GROUPS=") and "4242" in line.split("=")[1].split() for line in lines), lines
    assert "RES_VAR=from-resource" in lines
    (device,) = [line for line in lines if line.endswith("/dev/aos-fuse")]
    assert device.startswith("crw-rw-rw-") and "10," in device and "229" in device
    assert "hello from the host" in lines
    assert "GRANTED=open" in lines
    assert "OTHER=Operation not permitted" in lines, lines  # the device cgroup refuses it

    unknown_status = [s for s in sender.statuses() if s.instance.item_id == "unknown"][-1]
    assert (unknown_status.state, unknown_status.error.aos_code) == ("failed", 5)
    assert "nope" in unknown_status.error.message
    broken_status = [s for s in sender.statuses() if s.instance.item_id == "broken"][-1]
    assert (broken_status.state, broken_status.error.aos_code) == ("failed", 5)
    (alert,) = [a.resource_allocate_alert for a in sender.of_kind("alert") if a.HasField("resource_allocate_alert")]
    assert (alert.instance.item_id, alert.resource) == ("broken", "broken")
    assert "/dev/not-here" in alert.message


def test_a_bad_item_config_fails_the_instance_with_invalid_argument_naming_the_key(
    make_launcher, blob_server: BlobServer, layer: bytes
) -> None:
    image = build_image([layer], entrypoint=["/bin/sh", "-c"], cmd=["true"],
                        item_config={"quotas": {"ramLimit": "lots"}}, item_config_key="aosService")
    sender = RecordingSender()
    launcher = make_launcher(sender, resolver_for(blob_server.publish(image)), cpu=NODE_CPU)
    launcher.start()
    launcher.update_instances(sm_pb2.UpdateInstances(start_instances=[info(image.manifest_digest, "bad")]))
    status = started(sender, "bad")
    assert (status.state, status.error.aos_code) == ("failed", 6)
    assert status.error.message.startswith("item config quotas.ramLimit:")
    assert launcher.instance_logs()[0].path.exists() is False  # it never ran

"""Real runc instances on the network manager: the launcher runs on this machine (its image server
is on this machine's loopback), the manager inside the test world's node namespace, so every
link, address, route and rule lands in namespaces the test made."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "launcher"))

from launcher_helpers import RUNC_ID, RecordingSender, remove_containers  # noqa: E402
from oci_fixture import (BlobServer, build_image, busybox_layer, remove_cgroups, static_busybox,  # noqa: E402
                         system_test_problem)
from net_helpers import links, make_manager, networks  # noqa: E402
from netns import Namespace, World  # noqa: E402

from aos_sm.agent.launcher import Launcher, NullMonitor  # noqa: E402
from aos_sm.agent.network.manager import NetworkManager  # noqa: E402
from aos_sm.proto.common.v2 import common_pb2  # noqa: E402
from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2  # noqa: E402

pytestmark = pytest.mark.system

SERVICE = ["/bin/sh", "-c", "trap 'exit 0' TERM; sleep 1000 & wait"]


@pytest.fixture
def runc_problem() -> None:
    problem = system_test_problem()
    if problem is not None:
        pytest.skip(f"runc network test skipped because {problem}")


@pytest.fixture
def setup(world: World, tmp_path: Path, runc_problem: None) -> Iterator[Dict[str, object]]:
    busybox = static_busybox()
    assert busybox is not None
    server = BlobServer(tmp_path / "served")
    parent = f"aos-sm-nt-{uuid.uuid4().hex[:8]}"
    image = build_image([busybox_layer(busybox)], entrypoint=SERVICE[:2], cmd=SERVICE[2:])
    urls = server.publish(image)
    sender = RecordingSender()
    manager = make_manager(world, tmp_path / "work", prefix=parent + "-", real=True)
    launcher = Launcher(sender=sender, working_dir=tmp_path / "work", runtimes={RUNC_ID: ("runc", "runc")},
                        resolver=lambda digests: [urls[d] for d in digests], monitor=NullMonitor(),
                        cgroup_parent=parent, stop_timeout=5.0, network=manager)
    launcher.start()
    yield {"launcher": launcher, "manager": manager, "sender": sender, "image": image}
    launcher.stop_all_instances()
    launcher.stop()
    manager.update_networks(networks())  # the networks go: bridges, dnsmasq
    manager.keep_only(set())
    manager.close()
    remove_containers(tmp_path / "work" / "launcher" / "runtime" / "runc")
    remove_cgroups(parent)
    server.close()


def info(digest: str, name: str, network: str = "", ip: str = "", subnet: str = "172.18.0.0/16") -> sm_pb2.InstanceInfo:
    params = sm_pb2.NetworkParameters(network_id=network, subnet=subnet, ip=ip) if network else None
    return sm_pb2.InstanceInfo(instance=common_pb2.InstanceIdent(item_id=name, subject_id="subj", instance=0),
                               version="1.0.0", manifest_digest=digest, runtime_id=RUNC_ID, network_parameters=params)


def bundle_netns(tmp_path: Path, launcher: Launcher, name: str) -> str:
    from aos_sm.agent.ports import InstanceKey  # noqa: PLC0415
    container = launcher._containers.container_id(InstanceKey(name, "subj", 0))  # noqa: SLF001
    spec = json.loads((tmp_path / "work" / "launcher" / "bundles" / container / "config.json").read_text())
    [network] = [ns for ns in spec["linux"]["namespaces"] if ns["type"] == "network"]
    return str(network["path"])


def in_container(tmp_path: Path, launcher: Launcher, name: str, *command: str) -> str:
    from aos_sm.agent.ports import InstanceKey  # noqa: PLC0415
    container = launcher._containers.container_id(InstanceKey(name, "subj", 0))  # noqa: SLF001
    root = tmp_path / "work" / "launcher" / "runtime" / "runc"
    done = subprocess.run(["runc", "--root", str(root), "exec", container, *command], capture_output=True,
                          text=True, timeout=30, check=False)
    return done.stdout + done.stderr


def test_instances_get_their_own_namespaces_networked_or_loopback_only(
        world: World, tmp_path: Path, setup: Dict[str, object]) -> None:
    launcher, manager, sender = setup["launcher"], setup["manager"], setup["sender"]
    assert isinstance(launcher, Launcher) and isinstance(manager, NetworkManager)
    assert isinstance(sender, RecordingSender)
    digest = setup["image"].manifest_digest  # type: ignore[attr-defined]
    manager.update_networks(networks(("net-a", "172.18.0.0/16", "172.18.0.1", 0)))
    launcher.update_instances(sm_pb2.UpdateInstances(start_instances=[
        info(digest, "web", "net-a", "172.18.0.2"), info(digest, "db", "net-a", "172.18.0.3"), info(digest, "lonely")]))
    sender.wait(lambda s: len(s.of_kind("node_instances_status")) == 1, timeout=90)
    states = {s.instance.item_id: s.state for s in sender.of_kind("node_instances_status")[0].instances}
    assert states == {"web": "active", "db": "active", "lonely": "active"}, sender.statuses()

    web, lonely = (Namespace(Path(bundle_netns(tmp_path, launcher, n)).name) for n in ("web", "lonely"))
    assert links(lonely) == ["lo"]
    assert links(web) == ["eth0", "lo"]
    # The container's own view: its /etc/hosts (in its rootfs top layer) names it on its network,
    # and its resolv.conf points at the network's dnsmasq on the bridge address.
    hosts = in_container(tmp_path, launcher, "web", "/bin/busybox", "cat", "/etc/hosts")
    assert "172.18.0.2 net-a" in hosts, hosts
    resolv = in_container(tmp_path, launcher, "web", "/bin/busybox", "cat", "/etc/resolv.conf")
    assert resolv.splitlines()[0] == "nameserver 172.18.0.1", resolv
    # Each resolves the other's names through the network's dnsmasq (its /etc/resolv.conf).
    for who, other, ip in (("web", "db", "172.18.0.3"), ("db", "web", "172.18.0.2")):
        for name in (f"0.subj.{other}", f"subj.{other}.net-a"):
            answer = in_container(tmp_path, launcher, who, "/bin/busybox", "nslookup", name)
            assert ip in answer, answer
    server = web.listen(7000)
    try:
        db = Namespace(Path(bundle_netns(tmp_path, launcher, "db")).name)
        assert db.can_connect("172.18.0.2", 7000)
        assert not lonely.can_connect("172.18.0.2", 7000, timeout=1)
    finally:
        server.close()

    launcher.update_instances(sm_pb2.UpdateInstances(stop_instances=[
        common_pb2.InstanceIdent(item_id=n, subject_id="subj", instance=0) for n in ("web", "db", "lonely")]))
    sender.wait(lambda s: len(s.of_kind("node_instances_status")) == 2, timeout=60)
    launcher.wait_idle()
    ours: List[str] = [n for n in Path("/run/netns").iterdir() if n.name.startswith(manager.prefix)]  # type: ignore[attr-defined]
    assert ours == []
    assert [n for n in links(world.node) if n.startswith("aosv")] == []

"""The whole agent as a process inside the test world's node namespace, with the contract CM and
the image server there too (on the node's own loopback): UpdateNetworks and UpdateInstances over
gRPC, instances resolving each other's names, a network removal's CoreAlert, then a kill -9 and a
restart that converges to what the store needs; a listed network's bridge lives with its instances."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "launcher"))

from contract_cm import ContractCM  # noqa: E402
from launcher_helpers import remove_containers, wait_until  # noqa: E402
from net_helpers import links  # noqa: E402
from test_restart import dnsmasq_count  # noqa: E402
from netns import World  # noqa: E402
from oci_fixture import (BlobServer, build_image, busybox_layer, remove_cgroups, static_busybox,  # noqa: E402
                         system_test_problem)

from aos_sm.agent.launcher import container_id  # noqa: E402
from aos_sm.agent.launcher.bundle import aos_instance_id  # noqa: E402
from aos_sm.agent.ports import InstanceKey  # noqa: E402
from aos_sm.agent.sminfo import runtime_id  # noqa: E402

pytestmark = pytest.mark.system

NODE = "node-net"
SERVICE = ["/bin/sh", "-c", "trap 'exit 0' TERM; sleep 1000 & wait"]
NET = {"networkId": "net-a", "subnet": "172.18.0.0/16", "ip": "172.18.0.1"}


@pytest.fixture
def parent(world: World) -> Iterator[str]:
    problem = system_test_problem()
    if problem is not None:
        pytest.skip(f"agent network test skipped because {problem}")
    name = f"aos-sm-na{uuid.uuid4().hex[:6]}"
    yield name
    remove_cgroups(name)


def start(world: World, config: Path) -> "subprocess.Popen[str]":
    # Spawned from a thread inside the node namespace (a child inherits the thread's network
    # namespace), not through `ip netns exec`: that also remounts /sys, which hides the cgroup
    # mounts runc needs.
    return world.node.call(lambda: subprocess.Popen(
        [sys.executable, "-m", "aos_sm.agent.cli", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "GRPC_ENABLE_FORK_SUPPORT": "false", "PYTHONPATH": os.pathsep.join(sys.path)}))


def instance(digest: str, name: str, ip: str) -> Dict[str, Any]:
    return {"instance": {"itemId": name, "subjectId": "subj", "instance": "0"}, "version": "1.0.0",
            "manifestDigest": digest, "runtimeId": runtime_id("runc", NODE),
            "networkParameters": {"networkId": "net-a", "subnet": "172.18.0.0/16", "ip": ip}}


def ours(world: World, prefix: str) -> Dict[str, int]:
    names = links(world.node)
    return {"bridges": sum(n.startswith("br-") for n in names), "veths": sum(n.startswith("aosv") for n in names),
            "namespaces": sum(n.startswith(prefix) for n in os.listdir("/run/netns"))}


def test_the_agent_applies_cm_networks_and_instances_then_survives_a_kill(
        world: World, parent: str, tmp_path: Path) -> None:
    busybox = static_busybox()
    assert busybox is not None
    image = build_image([busybox_layer(busybox)], entrypoint=SERVICE[:2], cmd=SERVICE[2:])
    # Both servers listen on the node namespace's loopback: their sockets are made on a thread in it.
    cm = world.node.call(lambda: ContractCM().start())
    blobs = world.node.call(lambda: BlobServer(tmp_path / "served"))
    cm.blob_urls.update(blobs.publish(image))
    config = tmp_path / "sm.json"
    config.write_text(json.dumps({
        "nodeId": NODE, "cmServerURL": cm.address, "tlsMode": "plaintext", "cmReconnectTimeout": "200ms",
        "workingDir": str(tmp_path / "work"), "resourcesConfigFile": str(tmp_path / "none.cfg"),
        "runtimes": [{"type": "runc"}], "cgroupParent": parent}))
    state_root = tmp_path / "work" / "launcher" / "runtime" / "runc"
    agent = start(world, config)
    prefix = parent + "-"
    try:
        session = cm.wait_session(timeout=30)
        info = session.wait_for("sm_info", 30)
        assert [r.runtime_id for r in info.runtimes] == [runtime_id("runc", NODE)], info
        session.wait_for("node_instances_status", 30)
        session.send("update_networks", {"networks": [NET]})
        web, db = instance(image.manifest_digest, "web", "172.18.0.2"), instance(image.manifest_digest, "db", "172.18.0.3")
        session.send("update_instances", {"startInstances": [web, db]})
        batch = session.wait_for("node_instances_status", 60)
        assert sorted((s.instance.item_id, s.state) for s in batch.instances) == [
            ("db", "active"), ("web", "active")], [s.error.message for s in batch.instances]
        web_container = container_id(parent, InstanceKey("web", "subj", 0))
        answer = subprocess.run(["runc", "--root", str(state_root), "exec", web_container, "/bin/busybox",
                                 "nslookup", "subj.db"], capture_output=True, text=True, timeout=30)
        assert "172.18.0.3" in answer.stdout, answer.stdout + answer.stderr
        assert ours(world, prefix) == {"bridges": 1, "veths": 2, "namespaces": 2}
        assert dnsmasq_count(tmp_path / "work") == 1

        # kill -9, then a restart: the instances are adopted with their network, nothing doubles.
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
        agent = start(world, config)
        session = cm.wait_session(1, timeout=30)
        batch = session.wait_for("node_instances_status", 30)
        assert sorted((s.instance.item_id, s.state) for s in batch.instances) == [("db", "active"), ("web", "active")]
        wait_until(lambda: ours(world, prefix) == {"bridges": 1, "veths": 2, "namespaces": 2}, 10, "adoption")
        assert dnsmasq_count(tmp_path / "work") == 1  # adopted, not doubled

        # CM drops the network: its instances lose it (a CoreAlert names them) and keep running.
        session.send("update_networks", {"networks": []})
        alert = session.wait_for("alert", 30, lambda m: "net-a removed" in m.core_alert.message)
        for name in ("web", "db"):
            assert aos_instance_id(name, "subj", 0) in alert.core_alert.message, alert.core_alert.message
        wait_until(lambda: ours(world, prefix) == {"bridges": 0, "veths": 0, "namespaces": 2}, 10, "detach")
        wait_until(lambda: dnsmasq_count(tmp_path / "work") == 0, 10, "the network's dnsmasq to stop")

        session.send("update_instances", {"stopInstances": [web["instance"], db["instance"]]})
        session.wait_for("node_instances_status", 60)
        wait_until(lambda: ours(world, prefix) == {"bridges": 0, "veths": 0, "namespaces": 0}, 10, "stop")

        # The network listed again: nothing of it on the node until an instance of it starts, and
        # the bridge and dnsmasq go again with its last instance while CM still lists it.
        session.send("update_networks", {"networks": [NET]})
        session.send("update_instances", {"startInstances": [web]})
        batch = session.wait_for("node_instances_status", 60)
        assert [(s.instance.item_id, s.state) for s in batch.instances] == [("web", "active")], batch
        assert ours(world, prefix) == {"bridges": 1, "veths": 1, "namespaces": 1}
        assert dnsmasq_count(tmp_path / "work") == 1
        session.send("update_instances", {"stopInstances": [web["instance"]]})
        session.wait_for("node_instances_status", 60)
        wait_until(lambda: ours(world, prefix) == {"bridges": 0, "veths": 0, "namespaces": 0}, 10, "last stop")
        wait_until(lambda: dnsmasq_count(tmp_path / "work") == 0, 10, "the network's dnsmasq to stop with it")
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(15)
        except subprocess.TimeoutExpired:
            agent.kill()
        remove_containers(state_root)
        # The agent leaves its DNS servers running at a stop, for the next start to adopt: a test
        # that failed midway must not leave them behind.
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if str(tmp_path) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                    os.kill(int(pid), signal.SIGTERM)
            except OSError:
                pass
        for name in os.listdir("/run/netns"):
            if name.startswith(prefix):
                subprocess.run(["ip", "netns", "delete", name], check=False)
        cm.stop()
        blobs.close()

"""Restart and cleanup: whatever moment the agent dies, the next start converges to exactly what
the stored state needs; many start/stop cycles leak nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Dict

import pytest

from net_helpers import links, make_manager, networks, request
from netns import World

from aos_sm.agent.network.manager import NetworkManager

pytestmark = pytest.mark.system

NET_A = ("net-a", "172.18.0.0/16", "172.18.0.1", 0)


def dnsmasq_count(working_dir: Path) -> int:
    count = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "dnsmasq" in cmdline and str(working_dir) in cmdline:
            count += 1
    return count


def counts(world: World, manager: NetworkManager, working_dir: Path) -> Dict[str, int]:
    names = links(world.node)
    chains = json.loads(world.node.run("nft", "-j", "list", "table", "inet", "aos-sm").stdout)["nftables"]
    ours = [c["chain"]["name"] for c in chains if "chain" in c and not c["chain"]["name"].startswith("acct")]
    return {
        "bridges": sum(n.startswith("br-") for n in names),
        "veths": sum(n.startswith("aosv") for n in names),
        "namespaces": sum(n.startswith(manager.prefix) for n in os.listdir("/run/netns")),  # type: ignore[attr-defined]
        "instance chains": sum(c.startswith("inst-") for c in ours),
        "network chains": sum(c.startswith("net-") for c in ours),
        "dnsmasq": dnsmasq_count(working_dir),
    }


def test_fifty_attach_detach_cycles_leak_nothing(world: World, tmp_path: Path) -> None:
    manager = make_manager(world, tmp_path, real=True)
    p = manager.prefix  # type: ignore[attr-defined]
    try:
        manager.update_networks(networks(NET_A))
        baseline = counts(world, manager, tmp_path)
        # A listed network has nothing on the node until an instance of it comes.
        assert baseline == {"bridges": 0, "veths": 0, "namespaces": 0, "instance chains": 0,
                            "network chains": 0, "dnsmasq": 0}
        for run in range(1, 51):
            manager.attach(request(p + "x", "net-a", "172.18.0.0/16", "172.18.0.2", names=("0.s.x",)), run)
            manager.attach(request(p + "y"), run)
            if run == 1:
                assert counts(world, manager, tmp_path) == {"bridges": 1, "veths": 1, "namespaces": 2,
                                                            "instance chains": 2, "network chains": 1, "dnsmasq": 1}
            manager.detach(p + "x", run)
            manager.detach(p + "y", run)
        assert counts(world, manager, tmp_path) == baseline
    finally:
        manager.update_networks(networks())
        manager.keep_only(set())
        manager.close()
    assert dnsmasq_count(tmp_path) == 0


def test_a_kill_mid_attach_then_a_restart_converges_to_the_stored_state(world: World, tmp_path: Path) -> None:
    prefix = f"aos-sm-kill{uuid.uuid4().hex[:6]}-"
    script = Path(__file__).with_name("churn.py")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    child = world.node.popen([sys.executable, str(script), str(tmp_path), prefix], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, env=env)
    try:
        assert child.stdout is not None
        for _ in range(20):  # some full cycles, then die in the middle of one
            line = child.stdout.readline()
            assert line.startswith(b"attached"), line
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    manager = make_manager(world, tmp_path, prefix=prefix, real=True)
    try:
        stored = set(manager.attachments())
        # Index 2 is never detached after the first cycle: one stored instance at least.
        assert stored
        manager.keep_only(stored)  # the launcher keeps every instance it stored
        expected = {"bridges": 1, "veths": len(stored), "namespaces": len(stored), "instance chains": 2 * len(stored),
                    "network chains": 1, "dnsmasq": 1}
        assert counts(world, manager, tmp_path) == expected
        keep = set(sorted(stored)[:1])
        manager.keep_only(keep)  # and now only one: the rest goes
        assert counts(world, manager, tmp_path) == dict(expected, veths=1, namespaces=1, **{"instance chains": 2})
        manager.keep_only(set())  # none: the network stays listed, with nothing of it on the node
        assert counts(world, manager, tmp_path) == {"bridges": 0, "veths": 0, "namespaces": 0, "instance chains": 0,
                                                    "network chains": 0, "dnsmasq": 0}
        assert list(manager.networks()) == ["net-a"]
    finally:
        manager.update_networks(networks())
        manager.keep_only(set())
        manager.close()
    assert dnsmasq_count(tmp_path) == 0
    assert [n for n in os.listdir("/run/netns") if n.startswith(prefix)] == []


def test_a_stored_network_without_stored_instances_is_taken_down_at_the_restart(
        world: World, tmp_path: Path) -> None:
    first = make_manager(world, tmp_path, real=True)
    p = first.prefix  # type: ignore[attr-defined]
    second = None
    try:
        first.update_networks(networks(NET_A))
        first.attach(request(p + "0123456789abcdef", "net-a", "172.18.0.0/16", "172.18.0.2", names=("web",)), 1)
        first.close()
        # The agent dies after its instance went but before the network's objects did (a kill
        # between the two, or a store that lost the instance): the state keeps only the network.
        state = tmp_path / "network" / "state.json"
        data = json.loads(state.read_text())
        data["attachments"] = []
        state.write_text(json.dumps(data))
        second = make_manager(world, tmp_path, prefix=p, real=True)
        assert list(second.networks()) == ["net-a"] and second.attachments() == {}
        assert counts(world, second, tmp_path) == {"bridges": 0, "veths": 1, "namespaces": 1, "instance chains": 2,
                                                   "network chains": 0, "dnsmasq": 0}
        second.keep_only(set())  # the instance's leftovers go with the launcher's cleanup
        assert counts(world, second, tmp_path) == {"bridges": 0, "veths": 0, "namespaces": 0, "instance chains": 0,
                                                   "network chains": 0, "dnsmasq": 0}
        masquerade = world.node.run("nft", "list", "chain", "inet", "aos-sm", "postrouting").stdout
        assert "masquerade" not in masquerade, masquerade
        # and its next instance brings it back
        second.attach(request(p + "0123456789abcdef", "net-a", "172.18.0.0/16", "172.18.0.2"), 2)
        assert counts(world, second, tmp_path)["bridges"] == 1
    finally:
        last = second or first  # the one that owns the state now
        last.detach(p + "0123456789abcdef", 99)
        last.keep_only(set())
        last.close()
    assert dnsmasq_count(tmp_path) == 0


def test_restart_cleanup_removes_only_what_is_ours_and_unowned(world: World, tmp_path: Path) -> None:
    manager = make_manager(world, tmp_path)
    prefix = manager.prefix  # type: ignore[attr-defined]
    stray, foreign = prefix + "0123456789abcdef", prefix + "test-0123456789abcdef"
    for name in (stray, foreign):
        subprocess.run(["ip", "netns", "add", name], check=True)
    # A link of ours nobody owns (a kill between its creation and the state's save), and one
    # that only looks alike (Docker's bridges are br-<12 hex>).
    world.node.run("ip", "link", "add", "br-0000aaaa", "type", "bridge")
    world.node.run("ip", "link", "add", "br-0000aaaabbbb", "type", "bridge")
    try:
        manager.keep_only(set())
        assert sorted(n for n in os.listdir("/run/netns") if n.startswith(prefix)) == [foreign]
        assert [n for n in links(world.node) if n.startswith("br-")] == ["br-0000aaaabbbb"]
    finally:
        for name in (stray, foreign):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)


def test_a_failed_attach_rolls_back_every_step_and_fails_with_the_cause(world: World, tmp_path: Path) -> None:
    from aos_sm.agent.errors import AlreadyExist, InvalidArgument

    manager = make_manager(world, tmp_path, real=True)
    p = manager.prefix  # type: ignore[attr-defined]
    try:
        manager.update_networks(networks(NET_A))
        empty = counts(world, manager, tmp_path)
        # The network's first instance fails at its DNS names, after the bridge, the network's
        # filter and dnsmasq were made for it: they go again with the rest.
        with pytest.raises(InvalidArgument, match="is not a host name"):
            manager.attach(request(p + "0123456789abcdef", "net-a", "172.18.0.0/16", "172.18.0.2",
                                   names=("not a name",)), 1)
        assert counts(world, manager, tmp_path) == empty == {
            "bridges": 0, "veths": 0, "namespaces": 0, "instance chains": 0, "network chains": 0, "dnsmasq": 0}
        manager.attach(request(p + "0123456789abcdef", "net-a", "172.18.0.0/16", "172.18.0.2", names=("web",)), 1)
        before = counts(world, manager, tmp_path)
        # The DNS step comes after namespace, veth and filter: all three must go again.
        with pytest.raises(AlreadyExist):
            manager.attach(request(p + "fedcba9876543210", "net-a", "172.18.0.0/16", "172.18.0.3",
                                   names=("web",)), 1)
        assert counts(world, manager, tmp_path) == before
        assert list(manager.attachments()) == [p + "0123456789abcdef"]
    finally:
        manager.detach(p + "0123456789abcdef", 99)
        manager.update_networks(networks())
        manager.keep_only(set())
        manager.close()

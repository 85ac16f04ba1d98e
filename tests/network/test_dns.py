"""DNS names of instances through a supervised dnsmasq per network (NETWORK.md "DNS"), queried
over UDP from an instance namespace of a test world."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Callable, TypeVar

import pytest

from dnsquery import resolve_in
from lan import add_instance, make_lan
from netns import World

from aos_sm.agent.errors import AlreadyExist
from aos_sm.agent.network.dns import DnsService, instance_names

T = TypeVar("T")


def test_instance_names_follow_the_reference_scheme() -> None:
    assert instance_names("item", "subj", 0, "net1", "web") == [
        "0.subj.item", "subj.item", "0.subj.item.net1", "subj.item.net1", "web"]
    assert instance_names("item", "subj", 2, "net1", None) == ["2.subj.item", "2.subj.item.net1"]
    assert instance_names("item", "subj", 1, "", "") == ["1.subj.item"]


def _wait(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.mark.system
def test_names_resolve_conflicts_fail_and_a_killed_server_comes_back(world: World, tmp_path: Path) -> None:
    lan = make_lan(world)
    client = add_instance(lan, "172.17.0.2")
    state = tmp_path / "dns"
    dns = world.node.call(lambda: DnsService(state, check_interval=0.2))
    try:
        world.node.call(lambda: dns.set_network("net1", lan.bridge, lan.gateway, []))
        names = instance_names("item", "subj", 0, "net1", "web")
        world.node.call(lambda: dns.add_names("net1", "inst-a", "172.17.0.2", names))
        for name in names:
            assert resolve_in(client.namespace, lan.gateway, name) == ["172.17.0.2"], name
        assert resolve_in(client.namespace, lan.gateway, "WEB") == ["172.17.0.2"]

        # Another instance of the network may not take a name; its other names are not added.
        with pytest.raises(AlreadyExist, match="web"):
            world.node.call(lambda: dns.add_names("net1", "inst-b", "172.17.0.3", ["1.subj.item", "web"]))
        assert resolve_in(client.namespace, lan.gateway, "1.subj.item") == []
        pid = dns.pid("net1")
        world.node.call(lambda: dns.add_names("net1", "inst-b", "172.17.0.3", ["1.subj.item"]))
        assert resolve_in(client.namespace, lan.gateway, "1.subj.item") == ["172.17.0.3"]
        assert dns.pid("net1") == pid  # reloaded by SIGHUP, not restarted

        world.node.call(lambda: dns.remove_names("net1", "inst-b"))
        assert resolve_in(client.namespace, lan.gateway, "1.subj.item") == []

        # Killed: the supervisor starts it again, with the names.
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert _wait(lambda: dns.pid("net1") not in (None, pid))
        assert resolve_in(client.namespace, lan.gateway, "subj.item.net1") == ["172.17.0.2"]
    finally:
        dns.close(stop_servers=True)


@pytest.mark.system
def test_adopt_keeps_the_servers_of_kept_networks_and_removes_the_others(world: World, tmp_path: Path) -> None:
    lan = make_lan(world)
    other = make_lan(world, gateway="172.18.0.1")
    client = add_instance(lan, "172.17.0.2")
    state = tmp_path / "dns"
    first = world.node.call(lambda: DnsService(state, supervise=False))
    second = None
    try:
        world.node.call(lambda: first.set_network("kept", lan.bridge, lan.gateway, []))
        world.node.call(lambda: first.set_network("gone", other.bridge, other.gateway, []))
        world.node.call(lambda: first.add_names("kept", "inst-a", "172.17.0.2", ["a.example"]))
        kept_pid, gone_pid = first.pid("kept"), first.pid("gone")
        assert kept_pid and gone_pid
        first.close()  # the agent stops; its servers keep running

        second = world.node.call(lambda: DnsService(state, supervise=False))
        world.node.call(lambda: second.adopt({"kept"}))
        assert second.pid("kept") == kept_pid
        assert _wait(lambda: not Path(f"/proc/{gone_pid}").exists() or
                     Path(f"/proc/{gone_pid}/stat").read_text().split(") ")[1].startswith("Z"))
        assert sorted(path.name for path in state.iterdir()) == ["kept"]
        assert resolve_in(client.namespace, lan.gateway, "a.example") == ["172.17.0.2"]
        # The adopted server is supervised like one of ours: names still reload it.
        world.node.call(lambda: second.add_names("kept", "inst-b", "172.17.0.3", ["b.example"]))
        assert resolve_in(client.namespace, lan.gateway, "b.example") == ["172.17.0.3"]
    finally:
        first.close(stop_servers=True)
        if second is not None:
            second.close(stop_servers=True)

"""The network manager against a real kernel, inside the test world's node namespace."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from net_helpers import instance_ns, links, make_manager, networks, request
from netns import OUTSIDE_IP, World

from aos_sm.agent.errors import NotFound
from aos_sm.agent.network.instance import Rule

pytestmark = pytest.mark.system

NET_A = ("net-a", "172.18.0.0/16", "172.18.0.1", 0)
NET_B = ("net-b", "172.19.0.0/16", "172.19.0.1", 0)


def ours(world: World) -> list:
    return [n for n in links(world.node) if n.startswith(("br-", "vlan-", "aosv"))]


def test_instances_of_one_network_talk_others_only_by_rule_and_the_outside_only_outbound(
        world: World, tmp_path: Path) -> None:
    manager = make_manager(world, tmp_path)
    p = manager.prefix
    try:
        manager.update_networks(networks(NET_A, NET_B))
        assert ours(world) == []  # listed networks get their bridge with their first instance
        with pytest.raises(NotFound, match="network net-z is not on this node"):
            manager.attach(request(p + "z", "net-z", "172.21.0.0/16", "172.21.0.2"), 1)
        assert not (Path("/run/netns") / (p + "z")).exists()
        a1 = instance_ns(manager.attach(request(p + "a1", "net-a", "172.18.0.0/16", "172.18.0.2"), 1).netns)
        a2 = instance_ns(manager.attach(request(p + "a2", "net-a", "172.18.0.0/16", "172.18.0.3"), 1).netns)
        b1 = instance_ns(manager.attach(request(p + "b1", "net-b", "172.19.0.0/16", "172.19.0.2"), 1).netns)
        lonely = manager.attach(request(p + "lonely"), 1)
        assert lonely.files is None
        assert links(instance_ns(lonely.netns)) == ["lo"]
        assert links(a1) == ["eth0", "lo"]

        server = a1.listen(7000)
        other = a1.listen(7001)
        outside = world.outside.listen(8080)
        try:
            assert a2.can_connect("172.18.0.2", 7000)
            assert not b1.can_connect("172.18.0.2", 7000, timeout=1)
            assert a1.can_connect(OUTSIDE_IP, 8080)  # masquerade
            world.outside.run("ip", "route", "add", "172.18.0.0/16", "via", "203.0.113.2")
            assert not world.outside.can_connect("172.18.0.2", 7000, timeout=1)
            # A rule opens exactly that port, end to end. net-b's last instance goes and takes its
            # bridge along; the instance's next start makes it again.
            manager.detach(p + "b1", 1)
            assert len([n for n in ours(world) if n.startswith("br-")]) == 1
            b1 = instance_ns(manager.attach(request(p + "b1", "net-b", "172.19.0.0/16", "172.19.0.2",
                                                    rules=(Rule("172.18.0.2", "7000", "tcp"),)), 2).netns)
            assert b1.can_connect("172.18.0.2", 7000)
            assert not b1.can_connect("172.18.0.2", 7001, timeout=1)
        finally:
            for sock in (server, other, outside):
                sock.close()
        for name in ("a1", "a2", "b1", "lonely"):
            manager.detach(p + name, 99)
        assert ours(world) == [] and list(manager.networks()) == ["net-a", "net-b"]
        masquerade = world.node.run("nft", "list", "chain", "inet", "aos-sm", "postrouting").stdout
        assert "masquerade" not in masquerade, masquerade
    finally:
        for name in ("a1", "a2", "b1", "lonely"):
            manager.detach(p + name, 99)
        manager.keep_only(set())
    assert [name for name in world.node.run("ip", "netns").stdout.split() if name.startswith(p)] == []


def test_removing_a_network_detaches_its_instances_and_an_ip_change_moves_the_bridge(
        world: World, tmp_path: Path) -> None:
    manager = make_manager(world, tmp_path)
    p = manager.prefix
    try:
        # A network that cannot be built is refused with a CoreAlert; the rest of the list applies.
        manager.update_networks(networks(NET_A, ("net-bad", "172.19.0.0/16", "10.1.1.1", 0)))
        assert any("net-bad: ip 10.1.1.1 is not in 172.19.0.0/16" in t for t in manager.alerts.texts())
        assert list(manager.networks()) == ["net-a"] and ours(world) == []
        manager.attach(request(p + "a1", "net-a", "172.18.0.0/16", "172.18.0.2"), 1)
        bridge = next(name for name in links(world.node) if name.startswith("br-"))
        manager.update_networks(networks(("net-a", "172.18.0.0/16", "172.18.0.9", 0)))
        addresses = world.node.run("ip", "-4", "-br", "addr", "show", bridge).stdout
        assert "172.18.0.9/16" in addresses and "172.18.0.1/" not in addresses
        assert [n for n in links(world.node) if n.startswith("br-")] == [bridge]
        manager.update_networks(networks())
        assert [n for n in links(world.node) if n.startswith(("br-", "aosv"))] == []
        assert any("net-a removed" in text and p + "a1" in text for text in manager.alerts.texts())
        assert links(instance_ns(Path("/run/netns") / (p + "a1"))) == ["lo"]
    finally:
        manager.detach(p + "a1", 99)
        manager.keep_only(set())


def test_a_vlan_id_puts_a_vlan_link_on_the_uplink_or_says_it_cannot(world: World, tmp_path: Path) -> None:
    manager = make_manager(world, tmp_path)
    p = manager.prefix
    try:
        manager.update_networks(networks(("net-v", "172.20.0.0/16", "172.20.0.1", 42)))
        assert ours(world) == []  # nothing until an instance of the network comes
        manager.attach(request(p + "v1", "net-v", "172.20.0.0/16", "172.20.0.2"), 1)
        assert [n for n in links(world.node) if n.startswith("br-")] != []  # the bridge in any case
        if not manager.prerequisites.vlan:
            assert any("VLAN 42 not created" in text for text in manager.alerts.texts())
            pytest.skip("VLAN link not checked here because this kernel has no 8021q "
                        f"({manager.prerequisites.reasons.get('8021q')}); the qemu-system boot test checks it")
        detail = world.node.run("ip", "-d", "link", "show", next(n for n in links(world.node) if n.startswith("vlan-")))
        assert "vlan protocol 802.1Q id 42" in detail.stdout and f"@{world.uplink}" in detail.stdout
        manager.detach(p + "v1", 1)
        assert ours(world) == []  # the VLAN link went with the network's last instance
    finally:
        manager.detach(p + "v1", 99)
        manager.update_networks(networks())
        manager.keep_only(set())


def test_an_instance_needing_a_missing_feature_fails_with_that_reason_and_a_lonely_one_starts(
        world: World, tmp_path: Path) -> None:
    from aos_sm.agent.errors import NotSupported
    from aos_sm.agent.network.build import adapter_factory
    from aos_sm.agent.network.manager import NetworkManager
    from aos_sm.agent.network.prerequisites import Prerequisites
    from net_helpers import Alerts

    alerts = Alerts()
    lacking = Prerequisites({"bridge": True, "veth": True, "nf_tables nat/masquerade/ct/quota/objref": False},
                            {"nf_tables nat/masquerade/ct/quota/objref": "nftables: Error: Could not process rule"})
    prefix = f"aos-sm-miss{os.getpid() % 10000}-"

    def build() -> NetworkManager:
        manager = NetworkManager(working_dir=tmp_path, sender=alerts, namespace_prefix=prefix,
                                 make_adapter=adapter_factory(), prerequisites=lambda _adapter: lacking)
        manager.start()
        return manager

    manager = world.node.call(build)
    try:
        assert alerts.texts() == ["network prerequisites missing: nf_tables nat/masquerade/ct/quota/objref "
                                  "(nftables: Error: Could not process rule)"]
        manager.update_networks(networks(NET_A))
        with pytest.raises(NotSupported, match="nf_tables nat/masquerade/ct/quota/objref missing"):
            manager.attach(request(prefix + "a", "net-a", "172.18.0.0/16", "172.18.0.2"), 1)
        assert not (Path("/run/netns") / (prefix + "a")).exists()
        assert links(instance_ns(manager.attach(request(prefix + "b"), 1).netns)) == ["lo"]
    finally:
        manager.detach(prefix + "b", 99)
        manager.update_networks(networks())
        manager.keep_only(set())

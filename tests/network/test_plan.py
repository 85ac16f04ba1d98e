"""The network planner without a kernel: create, change, remove, attach, detach, rollback order."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from aos_sm.agent.errors import InvalidArgument
from aos_sm.agent.network import plan as plan_module
from aos_sm.agent.network.plan import (
    OUR_LINK, AddAddress, AddBridge, AddDnsNames, AddDnsNetwork, AddInstanceFilter, AddNamespace, AddNetworkFilter,
    AddTraffic, AddVeth, AddVlan, Attachment, DeleteAddress, DeleteLink, DeleteNamespace, EnableForwarding, Limits,
    Network, RemoveDnsNames, RemoveDnsNetwork, RemoveInstanceFilter, RemoveNetworkFilter, RemoveTraffic, Rule, Shape,
    Unshape, check_attachment, plan_attach, plan_detach, plan_network_change, plan_networks, rollback)

NET = Network("net-a", "172.18.0.0/16", "172.18.0.1", 0)
A1 = Attachment("ns-a1", "i1", "net-a", "172.18.0.2")


def test_a_new_network_is_only_stored_until_an_instance_of_it_attaches() -> None:
    result = plan_networks({}, [NET], {})
    assert result.steps == (("net-a", ()),) and result.desired == (NET,)
    assert OUR_LINK.match(NET.bridge) and len(NET.bridge) <= 15


def test_the_first_attach_creates_the_network_objects_before_the_veth() -> None:
    servers = Attachment("ns-a1", "i1", "net-a", "172.18.0.2", dns_servers=("8.8.8.8", "8.8.8.8", "1.1.1.1"))
    assert plan_attach(servers, NET, first=True) == [
        AddBridge(NET.bridge), AddAddress(NET.bridge, "172.18.0.1", 16), EnableForwarding(),
        AddNetworkFilter(NET), AddDnsNetwork(NET, ("8.8.8.8", "1.1.1.1")),
        AddNamespace("ns-a1"), AddVeth(servers.veth, "ns-a1", NET.bridge, "172.18.0.2", 16, "172.18.0.1"),
        AddInstanceFilter(servers, NET), AddDnsNames(servers), AddTraffic(servers)]
    # A later instance of the network finds them made.
    assert not any(isinstance(op, (AddBridge, AddNetworkFilter, AddDnsNetwork)) for op in plan_attach(A1, NET))


def test_the_last_detach_removes_the_network_objects_after_the_veth() -> None:
    ops = plan_detach(A1, NET, last=True)
    assert ops == [RemoveTraffic(A1), RemoveDnsNames(A1), RemoveInstanceFilter(A1), DeleteLink(A1.veth),
                   DeleteNamespace("ns-a1"), RemoveDnsNetwork("net-a"), RemoveNetworkFilter(NET),
                   DeleteAddress(NET.bridge, "172.18.0.1", 16), DeleteLink(NET.bridge)]
    assert not any(isinstance(op, (RemoveNetworkFilter, RemoveDnsNetwork)) for op in plan_detach(A1, NET))
    assert DeleteLink(NET.bridge) not in plan_detach(A1, NET)


def test_a_failed_first_attach_rolls_back_the_bridge_it_made_too() -> None:
    ops = plan_attach(A1, NET, first=True)
    done = ops[:ops.index(AddDnsNames(A1))]  # the names were taken: everything before goes again
    undo = rollback(done)
    assert undo == [RemoveInstanceFilter(A1), DeleteLink(A1.veth), DeleteNamespace("ns-a1"), RemoveDnsNetwork("net-a"),
                    RemoveNetworkFilter(NET), DeleteAddress(NET.bridge, "172.18.0.1", 16), DeleteLink(NET.bridge)]


def test_a_vlan_id_adds_a_vlan_link_at_the_first_attach_unless_the_kernel_cannot() -> None:
    tagged = Network("net-a", "172.18.0.0/16", "172.18.0.1", 42)
    ops = plan_attach(A1, tagged, first=True)
    assert ops.index(AddBridge(tagged.bridge)) < ops.index(AddVlan(tagged.vlan, 42, tagged.bridge)) \
        < ops.index(AddVeth(A1.veth, "ns-a1", tagged.bridge, "172.18.0.2", 16, "172.18.0.1"))
    assert DeleteLink(tagged.vlan) in plan_detach(A1, tagged, last=True)
    assert not any(isinstance(op, AddVlan) for op in plan_attach(A1, tagged, first=True, vlan_supported=False))
    assert not any(isinstance(op, AddVlan) for op in plan_attach(A1, tagged))


def test_a_change_or_removal_of_a_network_without_instances_touches_no_links() -> None:
    moved = Network("net-a", "172.18.0.0/16", "172.18.0.9", 42)
    lonely = {"ns-x": Attachment("ns-x", "x")}  # an instance with loopback only is no member
    assert plan_networks({"net-a": NET}, [moved], lonely).steps == (("net-a", ()),)
    removal = plan_networks({"net-a": NET}, [], lonely)
    assert removal.steps == (("net-a", ()),) and removal.detached == (("net-a", ()),)
    # With an instance the same change moves the bridge address and adds the VLAN link in place.
    ops = plan_networks({"net-a": NET}, [moved], {"ns-a1": A1}).steps[0][1]
    assert DeleteAddress(NET.bridge, "172.18.0.1", 16) in ops and AddVlan(moved.vlan, 42, NET.bridge) in ops


def test_an_unchanged_network_needs_nothing_and_an_ip_change_moves_the_address_in_place() -> None:
    assert plan_networks({"net-a": NET}, [NET], {}).steps == ()
    assert plan_networks({"net-a": NET}, [NET], {"ns-a1": A1}).steps == ()
    moved = Network("net-a", "172.18.0.0/16", "172.18.0.9", 0)
    ops = plan_network_change(NET, moved)
    assert ops[:2] == [DeleteAddress(NET.bridge, "172.18.0.1", 16), AddAddress(NET.bridge, "172.18.0.9", 16)]
    assert not any(isinstance(op, (AddBridge, DeleteLink)) for op in ops)  # the bridge stays


def test_removing_a_network_detaches_its_instances_first_keeping_their_namespaces() -> None:
    result = plan_networks({"net-a": NET}, [], {"ns-a1": A1})
    [(_, ops)] = result.steps
    assert result.detached == (("net-a", ("i1",)),)
    assert not any(isinstance(op, DeleteNamespace) for op in ops)
    assert ops.index(DeleteLink(A1.veth)) < ops.index(DeleteLink(NET.bridge))
    assert RemoveNetworkFilter(NET) in ops and RemoveDnsNetwork("net-a") in ops
    assert ops.count(DeleteLink(NET.bridge)) == 1


def test_a_bad_network_is_refused_and_the_rest_applied() -> None:
    bad = Network("net-b", "172.19.0.0/16", "10.0.0.1", 0)
    result = plan_networks({}, [bad, NET], {})
    assert [network_id for network_id, _ in result.steps] == ["net-a"] and result.desired == (NET,)
    assert "not in 172.19.0.0/16" in result.refused[0]


def test_attach_builds_namespace_veth_filter_names_traffic_and_shaping_in_order() -> None:
    shaped = Attachment("ns-a1", "i1", "net-a", "172.18.0.2", limits=Limits(upload_speed=8000))
    assert plan_attach(shaped, NET) == [
        AddNamespace("ns-a1"), AddVeth(shaped.veth, "ns-a1", NET.bridge, "172.18.0.2", 16, "172.18.0.1"),
        AddInstanceFilter(shaped, NET), AddDnsNames(shaped), AddTraffic(shaped), Shape(shaped)]
    assert plan_attach(Attachment("ns-x"), None) == [AddNamespace("ns-x")]


def test_detach_is_the_attach_undone_last_step_first() -> None:
    assert plan_detach(A1, NET) == [RemoveTraffic(A1), RemoveDnsNames(A1), RemoveInstanceFilter(A1),
                                    DeleteLink(A1.veth), DeleteNamespace("ns-a1")]


def test_rollback_undoes_the_done_ops_in_reverse_and_skips_what_needs_no_undo() -> None:
    done = [AddBridge("br-1"), AddAddress("br-1", "172.18.0.1", 16), EnableForwarding(), Shape(A1)]
    assert rollback(done) == [Unshape(A1), DeleteAddress("br-1", "172.18.0.1", 16), DeleteLink("br-1")]
    assert rollback([]) == []


@pytest.mark.parametrize("attachment, message", [
    (Attachment("n", "i", "net-a", "172.19.0.2"), "not a free host"),
    (Attachment("n", "i", "net-a", "172.18.0.1"), "not a free host"),
    (Attachment("n", "i", "net-a", "x"), "network_parameters.ip"),
    (Attachment("n", "i", "net-a", "172.18.0.2", rules=(Rule("172.19.0.2", "80", "icmp"),)), "proto"),
    (Attachment("n", "i", "net-a", "172.18.0.2", rules=(Rule("172.19.0.2", "80;drop", "tcp"),)), "dst_port"),
    (Attachment("n", "i", "net-a", "172.18.0.2", rules=(Rule("1.2.3.4 accept", "80", "tcp"),)), "dst_ip"),
])
def test_bad_instance_parameters_are_refused_naming_the_field(attachment: Attachment, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        check_attachment(attachment, NET)


FORBIDDEN = {"grpc", "os", "time", "threading", "asyncio", "subprocess", "psutil", "pyroute2",
             "socket", "signal", "pathlib", "io", "sqlite3", "shutil", "urllib", "concurrent", "ctypes"}


def test_the_planner_and_its_pure_helpers_import_nothing_that_does_io() -> None:
    folder = Path(plan_module.__file__).parent
    for name in ("plan.py", "firewall.py", "hostfiles.py"):
        roots = set()
        for node in ast.walk(ast.parse((folder / name).read_text())):
            if isinstance(node, ast.Import):
                roots |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots.add((node.module or "").split(".")[0])
        assert not roots & FORBIDDEN, (name, roots & FORBIDDEN)


def test_an_ip_change_reconfigures_the_dns_server_and_keeps_its_names() -> None:
    moved = Network("net-a", "172.18.0.0/16", "172.18.0.9", 0)
    ops = plan_network_change(NET, moved)
    assert AddDnsNetwork(moved) in ops
    assert not any(isinstance(op, RemoveDnsNetwork) for op in ops)


def test_ops_of_different_kinds_never_compare_equal_even_with_the_same_fields() -> None:
    assert AddBridge("br-1") != DeleteLink("br-1")
    assert AddBridge("br-1") == AddBridge("br-1") and hash(AddBridge("br-1")) == hash(AddBridge("br-1"))
    assert DeleteLink("br-1") not in [AddBridge("br-1")]
    assert len({AddBridge("x"), DeleteLink("x"), AddNamespace("x")}) == 3

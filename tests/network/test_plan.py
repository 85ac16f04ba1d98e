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


def test_a_new_network_is_a_bridge_with_its_address_forwarding_filter_and_dns() -> None:
    result = plan_networks({}, [NET], {})
    [(network_id, ops)] = result.steps
    assert network_id == "net-a"
    assert ops == (AddBridge(NET.bridge), AddAddress(NET.bridge, "172.18.0.1", 16), EnableForwarding(),
                   AddNetworkFilter(NET), AddDnsNetwork(NET))
    assert OUR_LINK.match(NET.bridge) and len(NET.bridge) <= 15


def test_a_vlan_id_adds_a_vlan_link_unless_the_kernel_cannot() -> None:
    tagged = Network("net-a", "172.18.0.0/16", "172.18.0.1", 42)
    assert AddVlan(tagged.vlan, 42, tagged.bridge) in plan_networks({}, [tagged], {}).steps[0][1]
    assert not any(isinstance(op, AddVlan) for op in plan_networks({}, [tagged], {}, vlan_supported=False).steps[0][1])


def test_an_unchanged_network_needs_nothing_and_an_ip_change_moves_the_address_in_place() -> None:
    assert plan_networks({"net-a": NET}, [NET], {}).steps == ()
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


def test_a_bad_network_is_refused_and_the_rest_applied() -> None:
    bad = Network("net-b", "172.19.0.0/16", "10.0.0.1", 0)
    result = plan_networks({}, [bad, NET], {})
    assert [network_id for network_id, _ in result.steps] == ["net-a"]
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

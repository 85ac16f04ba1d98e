"""Traffic accounting and limits in the node namespace of a test world (NETWORK.md "Traffic
accounting and limits"): public bytes counted per instance and for the node, private ones not,
an upload limit cut by the kernel at the limit, totals kept across a restart and reset by the day
change."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Callable, TypeVar

import pytest

from lan import add_instance, make_lan, outside_udp_sink, send_udp, tcp_transfer
from netns import OUTSIDE_IP, World

from aos_sm.agent.network.nft import Nft
from aos_sm.agent.network.traffic import TABLE, Traffic, instance_tag

T = TypeVar("T")
NOON = datetime.datetime(2026, 11, 30, 12, 0, tzinfo=datetime.timezone.utc).timestamp()
NEXT_DAY = NOON + 86400
PRIVATE_OUTSIDE = "10.9.0.1"  # routed through the uplink like a public address, but private

pytestmark = pytest.mark.system


def in_node(world: World, function: Callable[[], T]) -> T:
    return world.node.call(function)


def new_traffic(world: World, state: Path) -> Traffic:
    def build() -> Traffic:
        traffic = Traffic(Nft(), state)
        traffic.setup()
        return traffic
    return in_node(world, build)


def test_public_bytes_are_counted_for_the_instance_and_the_node_private_ones_are_not(
        world: World, tmp_path: Path) -> None:
    lan = make_lan(world)
    sender = add_instance(lan, "172.17.0.2")
    neighbour = add_instance(lan, "172.17.0.3")
    world.outside.run("ip", "addr", "add", f"{PRIVATE_OUTSIDE}/24", "dev", "out0")
    world.node.run("ip", "route", "add", "10.9.0.0/24", "via", OUTSIDE_IP)
    traffic = new_traffic(world, tmp_path / "traffic.json")
    in_node(world, lambda: traffic.add_instance("inst-a", sender.ip, None, None))
    in_node(world, lambda: traffic.add_instance("inst-b", neighbour.ip, None, None))
    in_node(world, lambda: traffic.read(NOON))
    sink = outside_udp_sink(world, 9000)
    try:
        datagrams, size = 1000, 1400
        wire = datagrams * (size + 28)  # IPv4 + UDP headers: what crosses the forward hook
        send_udp(sender.namespace, OUTSIDE_IP, 9000, datagrams, size)
        # Private destinations: another instance (bridged) and a private range routed out.
        send_udp(sender.namespace, neighbour.ip, 9000, 200, size)
        send_udp(sender.namespace, PRIVATE_OUTSIDE, 9000, 200, size)
        # The node's own public traffic.
        send_udp(world.node, OUTSIDE_IP, 9000, 100, size)
    finally:
        assert sink is not None
        sink.close()
    reading = in_node(world, lambda: traffic.read(NOON + 35))
    upload = reading.instances["inst-a"].upload
    assert abs(upload - wire) <= wire * 0.01, (upload, wire)
    assert reading.instances["inst-b"].download == 0
    assert reading.instances["inst-b"].upload == 0
    assert reading.node.upload >= 100 * (size + 28)
    assert reading.node.upload < 100 * (size + 28) + 20000  # not the instances' forwarded bytes
    assert reading.node_reported().upload >= upload + 0  # max(node, sum of instances)
    assert reading.node_reported().upload == max(reading.node.upload, upload)


def test_an_upload_limit_cuts_the_transfer_at_the_limit_until_the_day_changes(
        world: World, tmp_path: Path) -> None:
    lan = make_lan(world)
    sender = add_instance(lan, "172.17.0.2")
    limit = 400_000
    traffic = new_traffic(world, tmp_path / "traffic.json")
    in_node(world, lambda: traffic.add_instance("inst-a", sender.ip, None, limit))
    in_node(world, lambda: traffic.read(NOON))
    received, _ = tcp_transfer(sender.namespace, world.outside, OUTSIDE_IP, 9100, 3_000_000, timeout=4)
    assert received < limit  # cut: headers count too, so the payload is below the limit
    reading = in_node(world, lambda: traffic.read(NOON + 35))
    upload = reading.instances["inst-a"].upload
    # The kernel quota drops what goes over; a segmentation-offload packet can be up to 64 KiB.
    assert limit - 65536 <= upload <= limit, upload
    assert reading.instances["inst-a"].upload_limit == limit

    # A restart of the agent within the day: a new object finds the day's bytes and the cut stays.
    restarted = new_traffic(world, tmp_path / "traffic.json")
    in_node(world, lambda: restarted.adopt({"inst-a"}))
    in_node(world, lambda: restarted.add_instance("inst-a", sender.ip, None, limit))
    assert in_node(world, lambda: restarted.read(NOON + 70)).instances["inst-a"].upload == upload
    received, _ = tcp_transfer(sender.namespace, world.outside, OUTSIDE_IP, 9101, 100_000, timeout=2)
    assert received == 0

    # The next day: totals restart at zero and the quota lets traffic through again.
    rolled = in_node(world, lambda: restarted.read(NEXT_DAY))
    assert rolled.instances["inst-a"].upload == 0
    received, _ = tcp_transfer(sender.namespace, world.outside, OUTSIDE_IP, 9102, 100_000, timeout=10)
    assert received == 100_000
    after = in_node(world, lambda: restarted.read(NEXT_DAY + 35)).instances["inst-a"].upload
    assert 100_000 < after < 100_000 * 1.1


def test_the_totals_survive_a_clean_stop_and_reboot_that_lost_the_kernel_objects(world: World, tmp_path: Path) -> None:
    lan = make_lan(world)
    sender = add_instance(lan, "172.17.0.2")
    state = tmp_path / "traffic.json"
    traffic = new_traffic(world, state)
    in_node(world, lambda: traffic.add_instance("inst-a", sender.ip, None, 10_000_000))
    in_node(world, lambda: traffic.read(NOON))
    sink = outside_udp_sink(world, 9000)
    send_udp(sender.namespace, OUTSIDE_IP, 9000, 100, 1000)
    assert sink is not None
    sink.close()
    before = in_node(world, lambda: traffic.read(NOON + 35)).instances["inst-a"].upload
    assert before >= 100 * 1028
    in_node(world, traffic.close)  # the agent stops cleanly
    world.node.run("nft", "delete", "table", *TABLE.split())  # what a reboot does to the table
    rebooted = new_traffic(world, state)
    in_node(world, lambda: rebooted.add_instance("inst-a", sender.ip, None, 10_000_000))
    assert in_node(world, lambda: rebooted.read(NOON + 70)).instances["inst-a"].upload == before
    quota = world.node.run("nft", "-j", "list", "quotas", "table", *TABLE.split()).stdout
    assert f'"used": {before}' in quota  # the re-created quota starts with the day's bytes


def test_adopt_removes_the_objects_of_instances_that_are_gone_and_nothing_else(
        world: World, tmp_path: Path) -> None:
    lan = make_lan(world)
    kept, gone = add_instance(lan, "172.17.0.2"), add_instance(lan, "172.17.0.3")
    traffic = new_traffic(world, tmp_path / "traffic.json")
    in_node(world, lambda: traffic.add_instance("kept", kept.ip, 1000, None))
    in_node(world, lambda: traffic.add_instance("gone", gone.ip, 1000, 1000))
    # Someone else's chain in our table (the firewall's) must survive.
    world.node.run("nft", "add", "chain", *TABLE.split(), "fw-forward")
    restarted = new_traffic(world, tmp_path / "traffic.json")
    in_node(world, lambda: restarted.adopt({"kept"}))
    ruleset = world.node.run("nft", "list", "table", *TABLE.split()).stdout
    assert instance_tag("kept") in ruleset
    assert instance_tag("gone") not in ruleset
    assert "fw-forward" in ruleset
    assert list(in_node(world, lambda: restarted.read(NOON)).instances) == ["kept"]
    in_node(world, lambda: restarted.remove_instance("kept"))
    ruleset = world.node.run("nft", "list", "table", *TABLE.split()).stdout
    assert "acct-i-" not in ruleset and "acct-node-down" in ruleset and "fw-forward" in ruleset




def test_download_is_counted_and_a_download_limit_cuts_it(world: World, tmp_path: Path) -> None:
    lan = make_lan(world)
    receiver = add_instance(lan, "172.17.0.2")
    world.outside.run("ip", "route", "add", "172.17.0.0/16", "via", "203.0.113.2")
    traffic = new_traffic(world, tmp_path / "traffic.json")
    in_node(world, lambda: traffic.add_instance("inst-a", receiver.ip, 300_000, None))
    in_node(world, lambda: traffic.read(NOON))

    def bind() -> object:
        import socket
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("0.0.0.0", 9400))
        return sock
    sink = receiver.namespace.call(bind)
    try:
        send_udp(world.outside, receiver.ip, 9400, 100, 1000)  # routed in, not masqueraded
        first = in_node(world, lambda: traffic.read(NOON + 35)).instances["inst-a"]
        assert first.download == 100 * 1028 and first.upload == 0 and not first.download_cut
        send_udp(world.outside, receiver.ip, 9400, 500, 1000)
        second = in_node(world, lambda: traffic.read(NOON + 70)).instances["inst-a"]
        assert 300_000 - 1028 <= second.download <= 300_000
        assert second.download_cut
    finally:
        sink.close()  # type: ignore[attr-defined]


def test_accounting_that_someone_removed_is_put_back_at_the_next_reading(world: World, tmp_path: Path) -> None:
    lan = make_lan(world)
    sender = add_instance(lan, "172.17.0.2")
    traffic = new_traffic(world, tmp_path / "traffic.json")
    in_node(world, lambda: traffic.add_instance("inst-a", sender.ip, None, 50_000))
    in_node(world, lambda: traffic.read(NOON))
    sink = outside_udp_sink(world, 9000)
    assert sink is not None
    try:
        send_udp(sender.namespace, OUTSIDE_IP, 9000, 20, 1000)
        before = in_node(world, lambda: traffic.read(NOON + 35)).instances["inst-a"].upload
        assert before == 20 * 1028
        world.node.run("nft", "flush", "ruleset")  # a peer that "cleans up" the firewall
        after = in_node(world, lambda: traffic.read(NOON + 70))
        assert after.instances["inst-a"].upload == before  # the day's bytes are kept
        send_udp(sender.namespace, OUTSIDE_IP, 9000, 100, 1000)  # the limit holds again
        final = in_node(world, lambda: traffic.read(NOON + 105)).instances["inst-a"]
        assert 50_000 - 1028 <= final.upload <= 50_000 and final.upload_cut
    finally:
        sink.close()

"""Traffic accounting, limits and speeds of instances the network manager attached (its firewall,
masquerade and the accounting in one table), as the Done-when of issue 14 states them."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lan import outside_udp_sink, send_udp, tcp_transfer
from net_helpers import instance_ns, make_manager, networks
from netns import OUTSIDE_IP, World

from aos_sm.agent.network.instance import AttachRequest, Limits, NetworkParameters

pytestmark = pytest.mark.system

SUBNET = "172.18.0.0/16"


def attach(manager, name: str, ip: str, limits: Limits = Limits()):  # type: ignore[no-untyped-def]
    namespace = manager.prefix + name
    request = AttachRequest(namespace, namespace, NetworkParameters("net-a", SUBNET, ip), (), "", limits)
    return namespace, instance_ns(manager.attach(request, 1).netns)


def test_public_upload_is_counted_private_is_not_a_limit_cuts_and_a_speed_shapes(
        world: World, tmp_path: Path) -> None:
    manager = make_manager(world, tmp_path, real=True)
    try:
        manager.update_networks(networks(("net-a", SUBNET, "172.18.0.1", 0)))
        a_id, a = attach(manager, "a", "172.18.0.2")
        b_id, _ = attach(manager, "b", "172.18.0.3")
        limit_id, limited = attach(manager, "l", "172.18.0.4", Limits(upload_limit=400_000))
        _, shaped = attach(manager, "s", "172.18.0.5", Limits(upload_speed=8000))
        manager.read_traffic(time.time())
        sink = outside_udp_sink(world, 9000)
        try:
            datagrams, size = 1000, 1400
            wire = datagrams * (size + 28)
            send_udp(a, OUTSIDE_IP, 9000, datagrams, size)
            send_udp(a, "172.18.0.3", 9000, 300, size)  # the other instance: private, not counted
        finally:
            assert sink is not None
            sink.close()
        reading = manager.read_traffic(time.time())
        upload = reading.instances[a_id].upload
        assert abs(upload - wire) <= wire * 0.01, (upload, wire)
        assert reading.instances[b_id].download == 0
        assert reading.node_reported().upload >= upload

        received, _ = tcp_transfer(limited, world.outside, OUTSIDE_IP, 9100, 3_000_000, timeout=4)
        assert received < 400_000
        cut = manager.read_traffic(time.time()).instances[limit_id].upload
        assert 400_000 - 65536 <= cut <= 400_000, cut

        received, seconds = tcp_transfer(shaped, world.outside, OUTSIDE_IP, 9200, 4_000_000)
        assert received == 4_000_000
        speed = received * 8 / 1000 / seconds
        assert 8000 * 0.8 <= speed <= 8000 * 1.2, f"{speed:.0f} kbit/s"
    finally:
        for name in ("a", "b", "l", "s"):
            manager.detach(manager.prefix + name, 99)  # type: ignore[attr-defined]
        manager.update_networks(networks())
        manager.keep_only(set())
        manager.close()
    assert [n for n in world.node.run("ip", "-o", "link").stdout.split() if n.startswith("ifb-")] == []

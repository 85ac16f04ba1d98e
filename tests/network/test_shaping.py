"""Speed limits (item config downloadSpeed / uploadSpeed) measured through a test world: an
instance's TCP transfer to and from the outside runs at the configured rate within ±20 %. A
correctness test of the shaper (wrong units, a missing redirect or a wrong burst would be off by
far more), not a benchmark: the bound is wide and the transfer a few seconds long."""

from __future__ import annotations

import json

import pytest

from lan import add_instance, make_lan, tcp_download, tcp_transfer
from netns import OUTSIDE_IP, World

from aos_sm.agent.errors import InvalidArgument
from aos_sm.agent.network import shaping

SPEED_KBIT = 8000
SIZE = 4_000_000  # 4 s at 8000 kbit/s

pytestmark = pytest.mark.system


def _kbit_per_second(received: int, seconds: float) -> float:
    return received * 8 / 1000 / seconds


def test_upload_speed_is_held_to_the_configured_rate(world: World) -> None:
    instance = add_instance(make_lan(world), "172.17.0.2")
    world.node.call(lambda: shaping.shape(instance.host_veth, None, SPEED_KBIT))
    received, seconds = tcp_transfer(instance.namespace, world.outside, OUTSIDE_IP, 9200, SIZE)
    assert received == SIZE
    speed = _kbit_per_second(received, seconds)
    assert SPEED_KBIT * 0.8 <= speed <= SPEED_KBIT * 1.2, f"{speed:.0f} kbit/s"


def test_download_speed_is_held_to_the_configured_rate(world: World) -> None:
    instance = add_instance(make_lan(world), "172.17.0.2")
    world.node.call(lambda: shaping.shape(instance.host_veth, SPEED_KBIT, None))
    received, seconds = tcp_download(instance.namespace, world.outside, OUTSIDE_IP, 9201, SIZE)
    assert received == SIZE
    speed = _kbit_per_second(received, seconds)
    assert SPEED_KBIT * 0.8 <= speed <= SPEED_KBIT * 1.2, f"{speed:.0f} kbit/s"


def _links(world: World) -> set:
    return {link["ifname"] for link in json.loads(world.node.run("ip", "-j", "link").stdout)}


def test_unshape_and_stray_removal_leave_no_qdisc_or_ifb_behind(world: World) -> None:
    lan = make_lan(world)
    first, second = add_instance(lan, "172.17.0.2"), add_instance(lan, "172.17.0.3")
    world.node.call(lambda: shaping.shape(first.host_veth, 1000, 2000))
    world.node.call(lambda: shaping.shape(second.host_veth, None, 2000))
    assert shaping.ifb_name(first.host_veth) in _links(world)
    assert "tbf" in world.node.run("tc", "qdisc", "show", "dev", first.host_veth).stdout
    world.node.call(lambda: shaping.unshape(first.host_veth))
    world.node.call(lambda: shaping.unshape(first.host_veth))  # twice: nothing left is fine
    qdiscs = world.node.run("tc", "qdisc", "show", "dev", first.host_veth).stdout
    assert "tbf" not in qdiscs and "ingress" not in qdiscs
    assert shaping.ifb_name(first.host_veth) not in _links(world)
    # At an agent start, the ifb of an instance that is no longer kept goes.
    removed = world.node.call(lambda: shaping.remove_stray_ifbs([]))
    assert removed == {shaping.ifb_name(second.host_veth)}
    assert not any(name.startswith(shaping.IFB_PREFIX) for name in _links(world))


def test_ifb_names_fit_an_interface_name_and_speeds_are_checked() -> None:
    assert len(shaping.ifb_name("x" * 15).encode()) <= 15
    assert shaping.ifb_name("a") != shaping.ifb_name("b")
    with pytest.raises(InvalidArgument, match="uploadSpeed"):
        shaping.shape("nonexistent0", None, -5)

"""The test world itself: the node reaches the outside through its uplink, and the machine's own
interfaces are never among the node's (the isolation every network test relies on)."""

from __future__ import annotations

import json

import pytest

from netns import OUTSIDE_IP, World

from aos_sm.agent.network.nft import Nft


@pytest.mark.system
def test_the_node_reaches_the_outside_and_sees_only_its_own_links(world: World) -> None:
    server = world.outside.listen(8080)
    try:
        assert world.node.can_connect(OUTSIDE_IP, 8080)
        assert not world.node.can_connect(OUTSIDE_IP, 8081, timeout=1)  # refused: a real check
    finally:
        server.close()
    links = {link["ifname"] for link in json.loads(world.node.run("ip", "-j", "link").stdout)}
    assert links == {"lo", world.uplink}


@pytest.mark.system
def test_an_nft_batch_applies_in_the_namespace_it_was_run_in_and_atomically(world: World) -> None:
    def apply() -> object:
        nft = Nft()
        nft.run("add table inet aostest\nadd chain inet aostest c\nadd rule inet aostest c counter accept\n")
        with pytest.raises(Exception, match="nftables"):
            # the second command is invalid: the whole batch, first table included, is refused
            nft.run("add table inet aostest2\nadd rule inet nosuchtable c accept\n")
        return nft.query("list tables")

    tables = [item["table"]["name"] for item in world.node.call(apply)["nftables"] if "table" in item]
    assert tables == ["aostest"]
    host = world.outside.run("nft", "list", "tables").stdout
    assert "aostest" not in host

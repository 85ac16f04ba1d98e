"""Builds the network manager's adapter (imported only when the network manager is enabled:
the netlink and nftables parts cost nothing to an agent that does not use them)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from .adapter import Adapter, DnsPort, NoDns, NoShaping, NoTraffic, ShapingPort, TrafficPort
from .namespaces import NETNS_DIR, Namespaces
from .nft import Nft
from .rtnl import Rtnl


def adapter_factory(*, netns_dir: Path = NETNS_DIR, dns: Optional[Callable[[Nft], DnsPort]] = None,
                    traffic: Optional[Callable[[Nft], TrafficPort]] = None,
                    shaping: Optional[ShapingPort] = None) -> Callable[[], Adapter]:
    """A factory called once, on the thread (hence in the network namespace) the agent manages."""

    def make() -> Adapter:
        rtnl = Rtnl()
        nft = Nft()
        return Adapter(rtnl=rtnl, nft=nft, namespaces=Namespaces(netns_dir),
                       dns=dns(nft) if dns is not None else NoDns(),
                       traffic=traffic(nft) if traffic is not None else NoTraffic(),
                       shaping=shaping or NoShaping(), uplink=rtnl.default_route_device)

    return make

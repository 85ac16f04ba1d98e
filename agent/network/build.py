"""Builds the network manager's adapter (imported only when the network manager is enabled:
the netlink and nftables parts cost nothing to an agent that does not use them)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from .adapter import Adapter, DnsPort, NoDns, NoShaping, NoTraffic, ShapingPort, TrafficPort
from .namespaces import NETNS_DIR, Namespaces
from .nft import Nft
from .rtnl import Rtnl


class TcShaping:
    """``shaping.py``'s functions as the adapter's ShapingPort (pyroute2 loads on the first shape)."""

    def shape(self, host_veth: str, download_kbit: Optional[int], upload_kbit: Optional[int]) -> None:
        from . import shaping  # noqa: PLC0415 - only nodes that shape pay for it

        shaping.shape(host_veth, download_kbit, upload_kbit)

    def unshape(self, host_veth: str) -> None:
        from . import shaping  # noqa: PLC0415

        shaping.unshape(host_veth)


def real_parts(state_dir: Path) -> Callable[[], Adapter]:
    """The adapter with dnsmasq per network, nftables accounting and tc shaping, state under
    ``state_dir`` (``<workingDir>/network``)."""

    def dns(_nft: Nft) -> DnsPort:
        from .dns import DnsService  # noqa: PLC0415

        return DnsService(state_dir / "dns")

    def traffic(nft: Nft) -> TrafficPort:
        from .traffic import Traffic  # noqa: PLC0415

        return Traffic(nft, state_dir / "traffic.json")

    return adapter_factory(dns=dns, traffic=traffic, shaping=TcShaping())


def adapter_factory(*, netns_dir: Path = NETNS_DIR, dns: Optional[Callable[[Nft], DnsPort]] = None,
                    traffic: Optional[Callable[[Nft], TrafficPort]] = None,
                    shaping: Optional[ShapingPort] = None) -> Callable[[], Adapter]:
    """A factory called once, on the thread (hence in the network namespace) the agent manages:
    the DNS supervisor thread it starts lives there too."""

    def make() -> Adapter:
        rtnl = Rtnl()
        nft = Nft()
        return Adapter(rtnl=rtnl, nft=nft, namespaces=Namespaces(netns_dir),
                       dns=dns(nft) if dns is not None else NoDns(),
                       traffic=traffic(nft) if traffic is not None else NoTraffic(),
                       shaping=shaping or NoShaping(), uplink=rtnl.default_route_device)

    return make

"""An instance's ``/etc/hosts`` and ``/etc/resolv.conf`` (NETWORK.md). Pure.

One function makes both texts, so whoever puts them in place (bind mounts today, the instance
rootfs's top layer later) takes them from one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

LOCALHOST = ("127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback")


@dataclass(frozen=True)
class HostFiles:
    hosts: str
    resolv_conf: str


def instance_files(*, ip: str = "", network_id: str = "", hostname: str = "", gateway: str = "",
                   dns_servers: Sequence[str] = (), resource_hosts: Sequence[Tuple[str, str]] = ()) -> HostFiles:
    """``/etc/hosts``: localhost lines, ``<ip> <network_id> [<hostname>]``, then the resources'
    ``hosts`` (ip, name); ``/etc/resolv.conf``: the network's dnsmasq (the gateway), then CM's
    ``dns_servers``. Without a network: the localhost lines and no name server."""
    hosts = list(LOCALHOST)
    if ip:
        hosts.append(" ".join(part for part in (ip, network_id, hostname) if part))
    hosts += [f"{address} {name}" for address, name in resource_hosts]
    servers = ([gateway] if gateway else []) + [s for s in dns_servers if s and s != gateway]
    resolv = "".join(f"nameserver {server}\n" for server in servers)
    return HostFiles("\n".join(hosts) + "\n", resolv)

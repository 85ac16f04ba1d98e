"""What the launcher and the network manager exchange about one instance (light: no netlink,
no nftables, so the launcher imports it at no cost when networking is off)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol, Set, Tuple

from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

from .hostfiles import HostFiles


@dataclass(frozen=True)
class Rule:
    """One outbound allow rule from CM (FirewallRule); ``dst_port`` is a port or ``a-b``."""

    dst_ip: str
    dst_port: str = ""
    proto: str = ""
    src_ip: str = ""


@dataclass(frozen=True)
class Limits:
    """Item config quotas for the traffic parts (bytes per day; kbit/s)."""

    download_limit: Optional[int] = None
    upload_limit: Optional[int] = None
    download_speed: Optional[int] = None
    upload_speed: Optional[int] = None


@dataclass(frozen=True)
class NetworkParameters:
    """``InstanceInfo.network_parameters`` (or a pull source's equivalent, NETWORK.md "next contract")."""

    network_id: str
    subnet: str
    ip: str
    dns_servers: Tuple[str, ...] = ()
    rules: Tuple[Rule, ...] = ()

    @classmethod
    def of(cls, info: sm_pb2.InstanceInfo) -> Optional[NetworkParameters]:
        if not info.HasField("network_parameters") or not info.network_parameters.network_id:
            return None
        p = info.network_parameters
        return cls(p.network_id, p.subnet, p.ip, tuple(p.dns_servers),
                   tuple(Rule(r.dst_ip, r.dst_port, r.proto, r.src_ip) for r in p.rules))


@dataclass(frozen=True)
class AttachRequest:
    namespace: str  # the container id: also the namespace's name
    instance_id: str = ""
    parameters: Optional[NetworkParameters] = None
    names: Tuple[str, ...] = ()
    hostname: str = ""
    limits: Limits = Limits()


@dataclass(frozen=True)
class InstanceNetwork:
    """What the container spec needs: the namespace to join and, networked, the two files."""

    netns: Path
    files: Optional[HostFiles]


class InstanceNetworkPort(Protocol):
    """The launcher's view of the network manager."""

    def attach(self, request: AttachRequest, run: int) -> InstanceNetwork: ...

    def detach(self, namespace: str, run: int) -> None: ...

    def keep_only(self, namespaces: Set[str]) -> None: ...


"""Helpers of the network manager tests: a manager built inside the world's node namespace."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any, List, Optional

from netns import Namespace, World

from aos_sm.agent.network.build import adapter_factory, real_parts
from aos_sm.agent.network.instance import AttachRequest, NetworkParameters
from aos_sm.agent.network.manager import NetworkManager
from aos_sm.agent.network.prerequisites import check_prerequisites
from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2


class Alerts:
    def __init__(self) -> None:
        self.messages: List[sm_pb2.SMOutgoingMessages] = []

    def send(self, message: sm_pb2.SMOutgoingMessages) -> None:
        self.messages.append(message)

    def texts(self) -> List[str]:
        return [m.alert.core_alert.message for m in self.messages if m.alert.HasField("core_alert")]


def make_manager(world: World, working_dir: Path, prefix: Optional[str] = None, real: bool = False,
                 **factory: Any) -> NetworkManager:
    """Built and started on a thread inside the node namespace, so its sockets live there;
    ``real``: with dnsmasq, traffic accounting and tc shaping (as the agent builds it)."""
    alerts = Alerts()
    prefix = prefix or f"aos-sm-nt{uuid.uuid4().hex[:6]}-"

    def build() -> NetworkManager:
        manager = NetworkManager(working_dir=working_dir, sender=alerts, namespace_prefix=prefix,
                                 make_adapter=real_parts(working_dir / "network") if real
                                 else adapter_factory(**factory),
                                 prerequisites=lambda a: check_prerequisites(a.namespaces))
        manager.start()
        return manager

    manager = world.node.call(build)
    manager.alerts = alerts  # type: ignore[attr-defined]
    manager.prefix = prefix  # type: ignore[attr-defined]
    return manager


def networks(*items: tuple) -> sm_pb2.UpdateNetworks:
    return sm_pb2.UpdateNetworks(networks=[sm_pb2.UpdateNetworkParameters(network_id=n, subnet=s, ip=i, vlan_id=v)
                                           for n, s, i, v in items])


def request(namespace: str, network_id: str = "", subnet: str = "", ip: str = "", rules: tuple = (),
            names: tuple = ()) -> AttachRequest:
    params = NetworkParameters(network_id, subnet, ip, (), rules) if network_id else None
    return AttachRequest(namespace, namespace, params, names)


def links(ns: Namespace) -> List[str]:
    return sorted(link["ifname"] for link in json.loads(ns.run("ip", "-j", "link").stdout))


def instance_ns(path: Path) -> Namespace:
    return Namespace(path.name)

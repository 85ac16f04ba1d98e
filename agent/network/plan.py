"""The network planner: desired networks and instance attachments in, operations out. Pure.

Theory of operation
-------------------
The node's provider networks (``Network``: bridge, optional VLAN link, masquerade, the
network's filter and DNS server) and the instances attached to them (``Attachment``: a namespace,
a veth into it as ``eth0``, address and default route, the instance's filter chain, DNS names,
traffic accounting and shaping) are plain records. Each planning function compares what exists
with what is wanted and returns a list of :data:`Op`; every op knows its own undo
(:func:`undo`), so an executor that fails at op *k* rolls back by running the undos of ops
*k-1 … 0* in that order (:func:`rollback`), and a detach is the undo of the attach, reversed.

A network CM lists is only stored until an instance of it is attached here (NETWORK.md: its
bridge, VLAN and dnsmasq go when its last instance goes): the first attach to a network builds
the network's objects before the veth, as ops of that attach (a failure rolls them back too), and
the last detach removes them after the veth. UpdateNetworks changes or removes the objects of a
network only while it has instances; a network without instances has none to touch.

Nothing here does I/O, reads a clock or starts a thread (``tests/network/test_plan.py`` checks
the imports). Names of what we create are derived here too, so the adapter and the restart
cleanup agree on what is ours: ``br-<8 hex>`` bridges and ``vlan-<8 hex>`` VLAN links of a
network (NETWORK.md), ``aosv<10 hex>`` host veth ends, and the namespace of an instance named
by its container id (which starts with the agent's cgroup parent, so two agents on one host
never take each other's namespaces for strays).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union, get_args

from ..errors import InvalidArgument
from .instance import Limits, Rule

BRIDGE_PREFIX = "br-"
VLAN_PREFIX = "vlan-"
VETH_PREFIX = "aosv"
PEER_NAME = "eth0"
# Our links are recognised by the full pattern, not a prefix alone: Docker's bridges are
# br-<12 hex>, which a bare "br-" would also match.
OUR_LINK = re.compile(r"^(br-[0-9a-f]{8}|vlan-[0-9a-f]{8}|aosv[0-9a-f]{10})$")
_PORT = re.compile(r"^\d{1,5}(-\d{1,5})?$")
PROTOCOLS = ("tcp", "udp")


def _digest(text: str, length: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def bridge_name(network_id: str) -> str:
    return BRIDGE_PREFIX + _digest(network_id, 8)


def vlan_name(network_id: str) -> str:
    return VLAN_PREFIX + _digest(network_id, 8)


def veth_name(namespace: str) -> str:
    return VETH_PREFIX + _digest(namespace, 10)


def chain_name(namespace: str) -> str:
    """The instance's filter chain in our nftables table (never ``acct``-prefixed: net-traffic's)."""
    return "inst-" + _digest(namespace, 16)


def network_chain_name(network_id: str) -> str:
    return "net-" + _digest(network_id, 8)


# --- records


@dataclass(frozen=True)
class Network:
    """One provider network on this node (UpdateNetworkParameters): ``ip`` is this node's address
    in ``subnet``, the bridge address and the instances' gateway; ``vlan_id`` 0 is no VLAN."""

    network_id: str
    subnet: str
    ip: str
    vlan_id: int = 0

    @property
    def bridge(self) -> str:
        return bridge_name(self.network_id)

    @property
    def vlan(self) -> str:
        return vlan_name(self.network_id)

    @property
    def prefix(self) -> int:
        return ipaddress.ip_network(self.subnet, strict=False).prefixlen


@dataclass(frozen=True)
class Attachment:
    """An instance's place on a network; ``network_id`` empty: its namespace has loopback only."""

    namespace: str
    instance_id: str = ""
    network_id: str = ""
    ip: str = ""
    dns_servers: Tuple[str, ...] = ()
    rules: Tuple[Rule, ...] = ()
    names: Tuple[str, ...] = ()
    limits: Limits = Limits()

    @property
    def networked(self) -> bool:
        return bool(self.network_id)

    @property
    def veth(self) -> str:
        return veth_name(self.namespace)

    @property
    def chain(self) -> str:
        return chain_name(self.namespace)


# --- operations (each undone by another, or by nothing when the thing it made goes with its parent)
#
# NamedTuples, not frozen dataclasses: two dozen dataclasses cost 10 ms of import on the agent's
# start (the network manager's budget is 30 ms); equality is made type-aware below, so that
# AddBridge("x") is never DeleteLink("x").


class AddNamespace(NamedTuple):
    name: str


class DeleteNamespace(NamedTuple):
    name: str


class AddBridge(NamedTuple):
    name: str


class AddVlan(NamedTuple):
    name: str
    vlan_id: int
    bridge: str


class DeleteLink(NamedTuple):
    name: str


class AddAddress(NamedTuple):
    link: str
    ip: str
    prefix: int


class DeleteAddress(NamedTuple):
    link: str
    ip: str
    prefix: int


class AddVeth(NamedTuple):
    """Host end ``name`` on ``bridge`` (hairpin on); the peer made directly in ``namespace`` as
    ``eth0`` with ``ip/prefix``, up, with a default route via ``gateway``; lo up."""

    name: str
    namespace: str
    bridge: str
    ip: str
    prefix: int
    gateway: str


class EnableForwarding(NamedTuple):
    pass


class AddNetworkFilter(NamedTuple):
    """The network's masquerade rule and its input/forward defaults in our table."""

    network: Network


class RemoveNetworkFilter(NamedTuple):
    network: Network


class AddInstanceFilter(NamedTuple):
    attachment: Attachment
    network: Network


class RemoveInstanceFilter(NamedTuple):
    attachment: Attachment


class AddDnsNetwork(NamedTuple):
    """Start (or reconfigure) the network's DNS server; ``upstream``: CM's ``dns_servers``."""

    network: Network
    upstream: Tuple[str, ...] = ()


class RemoveDnsNetwork(NamedTuple):
    network_id: str


class AddDnsNames(NamedTuple):
    attachment: Attachment


class RemoveDnsNames(NamedTuple):
    attachment: Attachment


class AddTraffic(NamedTuple):
    attachment: Attachment


class RemoveTraffic(NamedTuple):
    attachment: Attachment


class Shape(NamedTuple):
    attachment: Attachment


class Unshape(NamedTuple):
    attachment: Attachment


class Nothing(NamedTuple):
    """The undo of an op whose result goes with its parent (an address inside a namespace)."""


Op = Union[AddNamespace, DeleteNamespace, AddBridge, AddVlan, DeleteLink, AddAddress, DeleteAddress, AddVeth,
           EnableForwarding, AddNetworkFilter, RemoveNetworkFilter, AddInstanceFilter, RemoveInstanceFilter,
           AddDnsNetwork, RemoveDnsNetwork, AddDnsNames, RemoveDnsNames, AddTraffic, RemoveTraffic, Shape,
           Unshape, Nothing]


def _same_op(self: Tuple[object, ...], other: object) -> bool:
    return type(self) is type(other) and tuple.__eq__(self, other)


def _other_op(self: Tuple[object, ...], other: object) -> bool:
    return not _same_op(self, other)


def _op_hash(self: Tuple[object, ...]) -> int:
    return hash((type(self).__name__, tuple.__hash__(self)))


for _kind in get_args(Op):
    setattr(_kind, "__eq__", _same_op)
    setattr(_kind, "__ne__", _other_op)
    setattr(_kind, "__hash__", _op_hash)


def undo(op: Op) -> Op:
    """The op that takes ``op``'s effect back (``Nothing`` for those that need none)."""
    if isinstance(op, AddNamespace):
        return DeleteNamespace(op.name)
    if isinstance(op, (AddBridge, AddVlan, AddVeth)):
        return DeleteLink(op.name)
    if isinstance(op, AddAddress):
        return DeleteAddress(op.link, op.ip, op.prefix)
    if isinstance(op, DeleteAddress):
        return AddAddress(op.link, op.ip, op.prefix)
    if isinstance(op, AddNetworkFilter):
        return RemoveNetworkFilter(op.network)
    if isinstance(op, RemoveNetworkFilter):
        return AddNetworkFilter(op.network)
    if isinstance(op, AddInstanceFilter):
        return RemoveInstanceFilter(op.attachment)
    if isinstance(op, AddDnsNetwork):
        return RemoveDnsNetwork(op.network.network_id)
    if isinstance(op, AddDnsNames):
        return RemoveDnsNames(op.attachment)
    if isinstance(op, AddTraffic):
        return RemoveTraffic(op.attachment)
    if isinstance(op, Shape):
        return Unshape(op.attachment)
    return Nothing()


def rollback(done: Sequence[Op]) -> List[Op]:
    """What undoes ``done`` (the ops that succeeded, in the order they ran): their undos, last first."""
    return [step for step in (undo(op) for op in reversed(done)) if not isinstance(step, Nothing)]


# --- checking what CM sends


def check_network(network: Network) -> None:
    """InvalidArgument naming the field when CM's network parameters cannot be built."""
    try:
        subnet = ipaddress.IPv4Network(network.subnet, strict=False)
    except ValueError as err:
        raise InvalidArgument(f"network {network.network_id}: subnet {network.subnet!r}: {err}") from err
    try:
        address = ipaddress.IPv4Address(network.ip)
    except ValueError as err:
        raise InvalidArgument(f"network {network.network_id}: ip {network.ip!r}: {err}") from err
    if not network.network_id:
        raise InvalidArgument("network: empty network_id")
    if address not in subnet:
        raise InvalidArgument(f"network {network.network_id}: ip {network.ip} is not in {network.subnet}")
    if not 0 <= network.vlan_id <= 4095:
        raise InvalidArgument(f"network {network.network_id}: vlan_id {network.vlan_id} is not 0-4095")


def check_attachment(attachment: Attachment, network: Network) -> None:
    """InvalidArgument naming the field when an instance's network parameters cannot be applied."""
    try:
        address = ipaddress.IPv4Address(attachment.ip)
    except ValueError as err:
        raise InvalidArgument(f"network_parameters.ip {attachment.ip!r}: {err}") from err
    subnet = ipaddress.IPv4Network(network.subnet, strict=False)
    if address not in subnet or str(address) == network.ip:
        raise InvalidArgument(f"network_parameters.ip {attachment.ip} is not a free host of {network.subnet}")
    for server in attachment.dns_servers:
        try:
            ipaddress.ip_address(server)
        except ValueError as err:
            raise InvalidArgument(f"network_parameters.dns_servers {server!r}: {err}") from err
    for rule in attachment.rules:
        check_rule(rule)


def check_rule(rule: Rule) -> None:
    for name, value in (("dst_ip", rule.dst_ip), ("src_ip", rule.src_ip)):
        if value:
            try:
                ipaddress.IPv4Network(value, strict=False)
            except ValueError as err:
                raise InvalidArgument(f"firewall rule {name} {value!r}: {err}") from err
    if not rule.dst_ip:
        raise InvalidArgument("firewall rule: empty dst_ip")
    if rule.dst_port and not _PORT.match(rule.dst_port):
        raise InvalidArgument(f"firewall rule dst_port {rule.dst_port!r} is not a port or a range")
    if rule.proto.lower() not in PROTOCOLS + ("", "all"):
        raise InvalidArgument(f"firewall rule proto {rule.proto!r} is not tcp or udp")
    if rule.dst_port and rule.proto.lower() not in PROTOCOLS:
        raise InvalidArgument(f"firewall rule dst_port {rule.dst_port} needs proto tcp or udp")


# --- planning


def plan_network_create(network: Network, vlan_supported: bool = True) -> List[Op]:
    ops: List[Op] = [AddBridge(network.bridge), AddAddress(network.bridge, network.ip, network.prefix)]
    if network.vlan_id and vlan_supported:
        ops.append(AddVlan(network.vlan, network.vlan_id, network.bridge))
    ops += [EnableForwarding(), AddNetworkFilter(network), AddDnsNetwork(network)]
    return ops


def plan_network_remove(network: Network) -> List[Op]:
    """The undo of its creation (whatever of it exists: the adapter's deletes tolerate absence)."""
    return rollback(plan_network_create(network))


def plan_network_change(old: Network, new: Network, vlan_supported: bool = True) -> List[Op]:
    """An ``ip``/``subnet``/``vlan_id`` change applied in place: the bridge stays, its address
    moves (NETWORK.md: the reference leaked the old bridge here)."""
    ops: List[Op] = []
    if (old.ip, old.prefix) != (new.ip, new.prefix):
        ops += [DeleteAddress(old.bridge, old.ip, old.prefix), AddAddress(new.bridge, new.ip, new.prefix)]
    if old.vlan_id != new.vlan_id:
        if old.vlan_id and vlan_supported:
            ops.append(DeleteLink(old.vlan))
        if new.vlan_id and vlan_supported:
            ops.append(AddVlan(new.vlan, new.vlan_id, new.bridge))
    if (old.subnet, old.ip) != (new.subnet, new.ip):
        # The DNS server is reconfigured, not removed: it keeps the names of the instances.
        ops += [RemoveNetworkFilter(old), AddNetworkFilter(new), AddDnsNetwork(new)]
    return ops


def plan_attach(attachment: Attachment, network: Optional[Network], first: bool = False,
                vlan_supported: bool = True) -> List[Op]:
    """Everything an instance's start needs, in order. ``first``: no other instance of the network
    is attached, so the network's bridge, VLAN, forwarding, filter and DNS server come first
    (the DNS server with this instance's ``dns_servers`` as upstream), then the namespace."""
    ops: List[Op] = []
    if attachment.networked and first:
        assert network is not None
        upstream = tuple(dict.fromkeys(attachment.dns_servers))
        ops += [AddDnsNetwork(op.network, upstream) if isinstance(op, AddDnsNetwork) else op
                for op in plan_network_create(network, vlan_supported)]
    ops.append(AddNamespace(attachment.namespace))
    if not attachment.networked:
        return ops
    assert network is not None
    ops += [
        AddVeth(attachment.veth, attachment.namespace, network.bridge, attachment.ip, network.prefix, network.ip),
        AddInstanceFilter(attachment, network),
        AddDnsNames(attachment),
        AddTraffic(attachment),
    ]
    limits = attachment.limits
    if limits.download_speed or limits.upload_speed:
        ops.append(Shape(attachment))
    return ops


def plan_detach(attachment: Attachment, network: Optional[Network], last: bool = False) -> List[Op]:
    """The undo of the attach, last step first: the namespace, then (``last``: no other instance
    of the network stays attached) the network's objects."""
    return rollback(plan_attach(attachment, network, first=last))


@dataclass(frozen=True)
class NetworkPlan:
    """What an UpdateNetworks does: per network, its ops (applied and rolled back alone, so one
    failure does not hold back the rest of the list); ``detached`` names, per removed network,
    the instances that lose their network."""

    steps: Tuple[Tuple[str, Tuple[Op, ...]], ...]
    desired: Tuple[Network, ...]
    detached: Tuple[Tuple[str, Tuple[str, ...]], ...] = ()
    refused: Tuple[str, ...] = field(default=())


def plan_networks(current: Mapping[str, Network], desired: Sequence[Network],
                  attachments: Mapping[str, Attachment], vlan_supported: bool = True) -> NetworkPlan:
    """UpdateNetworks carries the full list (NETWORK.md): networks missing from it are removed
    first (their instances detached: filter, names, veth; the namespace stays, loopback only),
    then the changed ones are changed in place. Only a network with attached instances has
    objects on the node: a new network, and the change or removal of one without instances, is
    a step with no ops (the caller only stores it); its first attach builds it. A network CM sent
    twice keeps its last entry; one that does not check is refused (named in ``refused``)."""
    wanted: Dict[str, Network] = {}
    refused: List[str] = []
    for network in desired:
        try:
            check_network(network)
        except InvalidArgument as err:
            refused.append(str(err))
            continue
        wanted.pop(network.network_id, None)
        wanted[network.network_id] = network
    steps: List[Tuple[str, Tuple[Op, ...]]] = []
    detached: List[Tuple[str, Tuple[str, ...]]] = []
    for network_id, network in current.items():
        if network_id in wanted:
            continue
        members = sorted(a.namespace for a in attachments.values() if a.network_id == network_id)
        ops: List[Op] = []
        for namespace in members:
            # The namespace itself stays (the instance keeps running, loopback only).
            ops += [op for op in plan_detach(attachments[namespace], network) if not isinstance(op, DeleteNamespace)]
        if members:
            ops += plan_network_remove(network)
        steps.append((network_id, tuple(ops)))
        detached.append((network_id, tuple(attachments[n].instance_id or n for n in members)))
    active = {a.network_id for a in attachments.values() if a.networked}
    for network_id, network in wanted.items():
        old = current.get(network_id)
        if old is None or network_id not in active:
            if old != network:
                steps.append((network_id, ()))  # stored only: built by its first attach
        elif old != network:
            steps.append((network_id, tuple(plan_network_change(old, network, vlan_supported))))
    return NetworkPlan(tuple(steps), tuple(wanted.values()), tuple(detached), tuple(refused))

"""Carries out the planner's ops: netlink (``rtnl.py``), namespaces, nftables, and the DNS,
traffic and shaping ports. Decides nothing; every delete tolerates absence, so an undo, a
repeated detach and the restart cleanup are all safe to run twice.

The adapter is built in the network namespace the agent manages (the node's): its rtnetlink
socket and nftables context are opened there, and stay there whatever thread calls later.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Protocol, Sequence, Set

from ..errors import AosError, RuntimeFailure
from . import firewall
from .namespaces import Namespaces
from .nft import Nft, NftError
from .plan import (AddAddress, AddBridge, AddDnsNames, AddDnsNetwork, AddInstanceFilter, AddNamespace,
                   AddNetworkFilter, AddTraffic, AddVeth, AddVlan, DeleteAddress, DeleteLink, DeleteNamespace,
                   EnableForwarding, Nothing, Op, PEER_NAME, network_chain_name, RemoveDnsNames, RemoveDnsNetwork, RemoveInstanceFilter,
                   RemoveNetworkFilter, RemoveTraffic, Shape, Unshape, rollback)
from .rtnl import Rtnl, setns, thread_netns

log = logging.getLogger(__name__)

IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


# --- the ports net-traffic implements (agent/network/dns.py, traffic.py, shaping.py)


class DnsPort(Protocol):
    def set_network(self, network_id: str, bridge: str, address: str, upstream: Sequence[str]) -> None: ...
    def remove_network(self, network_id: str) -> None: ...
    def add_names(self, network_id: str, instance_id: str, ip: str, names: Sequence[str]) -> None: ...
    def remove_names(self, network_id: str, instance_id: str) -> None: ...
    def adopt(self, keep_networks: Set[str]) -> None: ...
    def close(self) -> None: ...


class TrafficPort(Protocol):
    def setup(self) -> None: ...
    def add_instance(self, instance_id: str, ip: str, download_limit: Optional[int],
                     upload_limit: Optional[int]) -> None: ...
    def remove_instance(self, instance_id: str) -> None: ...
    def adopt(self, keep_instances: Set[str]) -> None: ...
    def close(self) -> None: ...


class ShapingPort(Protocol):
    def shape(self, host_veth: str, download_kbit: Optional[int], upload_kbit: Optional[int]) -> None: ...
    def unshape(self, host_veth: str) -> None: ...


class NoDns:
    """No DNS service (the names are not served): the default until one is wired in."""

    def set_network(self, network_id: str, bridge: str, address: str, upstream: Sequence[str]) -> None:
        log.debug("dns: network %s not served (no DNS service)", network_id)

    def remove_network(self, network_id: str) -> None:
        pass

    def add_names(self, network_id: str, instance_id: str, ip: str, names: Sequence[str]) -> None:
        pass

    def remove_names(self, network_id: str, instance_id: str) -> None:
        pass

    def adopt(self, keep_networks: Set[str]) -> None:
        pass

    def close(self) -> None:
        pass


class NoTraffic:
    def setup(self) -> None:
        pass

    def add_instance(self, instance_id: str, ip: str, download_limit: Optional[int],
                     upload_limit: Optional[int]) -> None:
        pass

    def remove_instance(self, instance_id: str) -> None:
        pass

    def adopt(self, keep_instances: Set[str]) -> None:
        pass

    def close(self) -> None:
        pass


class NoShaping:
    def shape(self, host_veth: str, download_kbit: Optional[int], upload_kbit: Optional[int]) -> None:
        if download_kbit or upload_kbit:
            log.warning("%s: speed limits not applied (no shaping in this build)", host_veth)

    def unshape(self, host_veth: str) -> None:
        pass


class Adapter:
    """Runs ops; ``run`` rolls back what it did when one fails, then raises."""

    def __init__(self, *, rtnl: Rtnl, nft: Nft, namespaces: Namespaces, dns: DnsPort, traffic: TrafficPort,
                 shaping: ShapingPort, uplink: Callable[[], Optional[str]]) -> None:
        self.rtnl = rtnl
        self.nft = nft
        self.namespaces = namespaces
        self.dns = dns
        self.traffic = traffic
        self.shaping = shaping
        self._uplink = uplink
        self._firewall_ready = False
        # The namespace this agent manages: the one the adapter was made in.
        self._home = thread_netns()

    @contextlib.contextmanager
    def at_home(self) -> Iterator[None]:
        """Run the block in the managed namespace whatever thread calls (network namespaces are
        per thread): /proc/sys/net, processes started (dnsmasq) and threads made inside it all
        belong there. On the agent's own threads this is a no-op in effect."""
        current = thread_netns()
        try:
            setns(self._home)
            try:
                yield
            finally:
                setns(current)
        finally:
            os.close(current)

    def ensure_firewall(self) -> None:
        """Our table, base chains and dispatch rules, and the traffic accounting's, made when the
        first network or networked instance needs them (an agent with no network never changes
        the node's firewall)."""
        if self._firewall_ready:
            return
        self.nft.run(firewall.base_script() + firewall.base_rules_script())
        self.traffic.setup()
        self._firewall_ready = True

    def run(self, ops: Sequence[Op]) -> None:
        done: List[Op] = []
        for op in ops:
            try:
                self.apply(op)
            except Exception as err:
                log.warning("network: %s failed (%s); rolling back %d steps", type(op).__name__, err, len(done))
                self.undo(done)
                raise
            done.append(op)

    def undo(self, done: Sequence[Op]) -> None:
        """Best effort: each undo step runs even when an earlier one failed (logged)."""
        for step in rollback(done):
            try:
                self.apply(step)
            except Exception as err:
                log.error("network: rollback step %s failed: %s", type(step).__name__, err)

    def run_all(self, ops: Sequence[Op]) -> List[str]:
        """Teardown: every op runs; the failures' messages come back (nothing to roll back to)."""
        problems = []
        for op in ops:
            try:
                self.apply(op)
            except Exception as err:
                problems.append(f"{type(op).__name__}: {err}")
        return problems

    # --- one op

    def apply(self, op: Op) -> None:  # noqa: C901 - one dispatch over the op kinds
        if isinstance(op, AddNamespace):
            self.namespaces.delete(op.name)  # a leftover of a run the agent did not see end
            self.namespaces.create(op.name)
            with Rtnl.open_in(self.namespaces.path(op.name)) as inside:
                inside.set_link("lo", up=True)
        elif isinstance(op, DeleteNamespace):
            self.namespaces.delete(op.name)
        elif isinstance(op, AddBridge):
            if not self.rtnl.exists(op.name):
                self.rtnl.add_bridge(op.name)
            self.rtnl.set_link(op.name, up=True)
        elif isinstance(op, AddVlan):
            uplink = self._uplink()
            if uplink is None:
                raise RuntimeFailure(f"VLAN {op.vlan_id}: no uplink (no default route) to put it on")
            self.rtnl.delete_link(op.name)
            self.rtnl.add_vlan(op.name, uplink, op.vlan_id)
            self.rtnl.set_link(op.name, master=op.bridge)
            self.rtnl.set_link(op.name, up=True)
        elif isinstance(op, DeleteLink):
            self.rtnl.delete_link(op.name)
        elif isinstance(op, AddAddress):
            self.rtnl.add_address(op.link, op.ip, op.prefix)
        elif isinstance(op, DeleteAddress):
            self.rtnl.delete_address(op.link, op.ip, op.prefix)
        elif isinstance(op, AddVeth):
            self._add_veth(op)
        elif isinstance(op, EnableForwarding):
            _enable_forwarding()
        elif isinstance(op, AddNetworkFilter):
            # Re-applied after a restart or a change: the old masquerade rule goes, by handle, in
            # the same batch as its replacement.
            self.ensure_firewall()
            self.nft.run(firewall.remove_network_script(
                op.network, self.masquerade_handles(op.network.network_id), present=False)
                + firewall.add_network_script(op.network))
        elif isinstance(op, RemoveNetworkFilter):
            handles = self.masquerade_handles(op.network.network_id)
            present = firewall_chain_present(self.nft, network_chain_name(op.network.network_id))
            script = firewall.remove_network_script(op.network, handles, present)
            if script:
                self.nft.run(script)
        elif isinstance(op, AddInstanceFilter):
            self.ensure_firewall()
            self.nft.run(firewall.add_instance_script(op.attachment, op.network))
        elif isinstance(op, RemoveInstanceFilter):
            script = firewall.remove_instance_script(
                op.attachment, firewall_chain_present(self.nft, op.attachment.chain + "-out"))
            if script:
                self.nft.run(script)
        elif isinstance(op, AddDnsNetwork):
            self.dns.set_network(op.network.network_id, op.network.bridge, op.network.ip, op.upstream)
        elif isinstance(op, RemoveDnsNetwork):
            self.dns.remove_network(op.network_id)
        elif isinstance(op, AddDnsNames):
            a = op.attachment
            self.dns.add_names(a.network_id, a.namespace, a.ip, a.names)
        elif isinstance(op, RemoveDnsNames):
            self.dns.remove_names(op.attachment.network_id, op.attachment.namespace)
        elif isinstance(op, AddTraffic):
            a = op.attachment
            self.traffic.add_instance(a.namespace, a.ip, a.limits.download_limit, a.limits.upload_limit)
        elif isinstance(op, RemoveTraffic):
            self.traffic.remove_instance(op.attachment.namespace)
        elif isinstance(op, Shape):
            a = op.attachment
            self.shaping.shape(a.veth, a.limits.download_speed, a.limits.upload_speed)
        elif isinstance(op, Unshape):
            self.shaping.unshape(op.attachment.veth)
        elif isinstance(op, Nothing):
            pass
        else:  # pragma: no cover - the Op union is closed
            raise RuntimeFailure(f"network: unknown op {op!r}")

    def _add_veth(self, op: AddVeth) -> None:
        self.rtnl.delete_link(op.name)
        path = self.namespaces.path(op.namespace)
        with open(path, "rb") as target:
            self.rtnl.add_veth(op.name, PEER_NAME, target.fileno())
        try:
            self.rtnl.set_link(op.name, master=op.bridge)
            self.rtnl.set_hairpin(op.name)
            self.rtnl.set_link(op.name, up=True)
            with Rtnl.open_in(path) as inside:
                inside.add_address(PEER_NAME, op.ip, op.prefix)
                inside.set_link(PEER_NAME, up=True)
                inside.add_default_route(op.gateway, PEER_NAME)
        except BaseException:
            with contextlib.suppress(AosError):
                self.rtnl.delete_link(op.name)
            raise

    # --- what exists (restart cleanup, deletes by handle)

    def masquerade_handles(self, network_id: str) -> List[int]:
        comment = firewall.masquerade_comment(network_id)
        return [int(rule["handle"]) for rule in self.rules("postrouting") if rule.get("comment") == comment]

    def rules(self, chain: str) -> List[Dict[str, Any]]:
        try:
            listed = self.nft.query(f"list chain {firewall.TABLE} {chain}")
        except NftError:
            return []
        return [item["rule"] for item in listed.get("nftables", []) if "rule" in item]

    def chains(self) -> List[str]:
        try:
            listed = self.nft.query(f"list table {firewall.TABLE}")
        except NftError:
            return []
        return [item["chain"]["name"] for item in listed.get("nftables", []) if "chain" in item]


def firewall_chain_present(nft: Nft, chain: str) -> bool:
    try:
        nft.query(f"list chain {firewall.TABLE} {chain}")
        return True
    except NftError:
        return False


def _enable_forwarding() -> None:
    # /proc/sys/net is the netns of the opening thread: the agent's threads live in the node's.
    try:
        if IP_FORWARD.read_text().strip() != "1":
            IP_FORWARD.write_text("1\n")
    except OSError as err:
        raise RuntimeFailure.from_os_error(err, "enable IPv4 forwarding") from err

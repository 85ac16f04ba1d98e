"""The network manager: runs the planner's ops for UpdateNetworks and for instance attach/detach,
keeps what it made in ``<workingDir>/network/state.json`` (atomic writes), and after a restart
adopts what that state owns and removes the rest of ours.

A network CM lists is stored; its bridge, VLAN link, masquerade and dnsmasq exist only while an
instance of it is attached on this node (NETWORK.md): the first attach builds them and the last
detach removes them, each as ops of that attach or detach.

Sources of network parameters are ports: today ``update_networks`` (CM's UpdateNetworks) and the
:class:`AttachRequest` the launcher builds from ``InstanceInfo.network_parameters``; a pull source
(NETWORK.md "next contract") would call the same two methods. One lock serialises every change:
attaches take milliseconds, and a network change must never interleave with an attach to it.
"""

from __future__ import annotations

import contextlib
import json
import re
import logging
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple

from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

from ..atomic import write_atomic
from ..errors import NotFound, NotSupported
from ..messages import core_alert
from ..ports import Sender
from . import firewall
from .adapter import Adapter
from .hostfiles import instance_files
from .instance import AttachRequest, InstanceNetwork, Limits, Rule
from .plan import (OUR_LINK, AddDnsNames, AddDnsNetwork, AddInstanceFilter, Attachment, Network, Op,
                   check_attachment, network_chain_name, plan_attach, plan_detach, plan_network_create,
                   plan_network_remove, plan_networks)
from .prerequisites import Prerequisites

log = logging.getLogger(__name__)


class NetworkManager:
    def __init__(self, *, working_dir: Path, sender: Sender, namespace_prefix: str,
                 make_adapter: Callable[[], Adapter],
                 prerequisites: Optional[Callable[[Adapter], Prerequisites]] = None) -> None:
        self._root = working_dir / "network"
        self._state_path = self._root / "state.json"
        self._sender = sender
        self._prefix = namespace_prefix
        self._make_adapter = make_adapter
        self._check = prerequisites
        self._lock = threading.RLock()
        self._adapter: Optional[Adapter] = None
        self._problem: Optional[str] = None  # why the manager cannot work at all
        self.prerequisites = Prerequisites()
        self._networks: Dict[str, Network] = {}
        self._attachments: Dict[str, Attachment] = {}
        self._runs: Dict[str, int] = {}
        self._upstream: Dict[str, Tuple[str, ...]] = {}

    # --- start and stop

    def start(self) -> None:
        """Check the prerequisites (one CoreAlert naming what is missing), then rebuild or adopt the
        stored networks and attachments. Strays go in :meth:`keep_only`, once the launcher knows
        which instances it keeps."""
        with self._lock:
            try:
                self._adapter = self._make_adapter()
            except Exception as err:
                self._problem = f"network manager unavailable: {err}"
                log.error("%s", self._problem)
                self._sender.send(core_alert(self._problem))
                return
            if self._check is not None:
                self.prerequisites = self._check(self._adapter)
                if self.prerequisites.missing:
                    text = f"network prerequisites missing: {self.prerequisites.summary()}"
                    log.error("%s", text)
                    self._sender.send(core_alert(text))
            self._load()
            with self._adapter.at_home():
                try:
                    # Our table and the node's traffic counters from the start (NETWORK.md).
                    self._adapter.ensure_firewall()
                except Exception as err:
                    self._alert(f"network firewall unavailable: {err}")
                self._restore(self._adapter)

    def _restore(self, adapter: Adapter) -> None:
        for namespace, attachment in list(self._attachments.items()):
            if not adapter.namespaces.path(namespace).exists():
                # Its network's objects are settled below, by whether instances remain.
                log.warning("network: namespace %s is gone; its attachment is dropped", namespace)
                adapter.run_all(plan_detach(attachment, self._networks.get(attachment.network_id)))
                self._forget(namespace)
        active = self._active()
        # The DNS servers of the networks with instances still run: owned again before anything
        # asks for them (a second server on the same address would fail); the others are stopped.
        try:
            adapter.dns.adopt(active)
        except Exception as err:
            log.warning("network: adopting the DNS servers: %s", err)
        for network in list(self._networks.values()):
            if network.network_id not in active:
                # Stored, but no instance here (its last one went while the agent was down, or
                # a kill came between a last detach and the state's save): nothing of it stays.
                for problem in adapter.run_all(plan_network_remove(network)):
                    log.warning("network %s: removing what was left of it: %s", network.network_id, problem)
                continue
            # Re-applied step by step, never rolled back: what exists stays, what is missing is made.
            upstream = self._upstream_of(network.network_id)
            self._upstream[network.network_id] = upstream
            ops = [AddDnsNetwork(op.network, upstream) if isinstance(op, AddDnsNetwork) else op
                   for op in plan_network_create(network, self.prerequisites.vlan)]
            for problem in adapter.run_all(ops):
                self._alert(f"network {network.network_id}: not fully restored: {problem}")
        for namespace, attachment in list(self._attachments.items()):
            home = self._networks.get(attachment.network_id)
            if attachment.networked and home is not None:
                # The links and the namespace survived; the rules and names are re-applied
                # (both idempotent); traffic and shaping adopt their own state.
                ops = [op for op in plan_attach(attachment, home) if isinstance(op, (AddInstanceFilter, AddDnsNames))]
                problems = adapter.run_all(ops)
                for problem in problems:
                    log.warning("network: re-adopting %s: %s", namespace, problem)
        self._save()

    def close(self) -> None:
        """At agent stop: dnsmasq servers keep running (the next start adopts them); the day's
        traffic is stored."""
        with self._lock:
            if self._adapter is not None:
                with self._adapter.at_home():
                    self._adapter.dns.close()
                    try:
                        self._adapter.traffic.close()
                    except Exception as err:
                        log.warning("network: storing traffic at stop: %s", err)

    def traffic_port(self) -> "TrafficReader":
        """The accounting as monitoring reads it (in the managed namespace, whatever thread)."""
        return TrafficReader(self)

    def read_traffic(self, now: float) -> Any:
        with self._lock:
            if self._adapter is None or not hasattr(self._adapter.traffic, "read"):
                raise NotSupported(self._problem or "network manager not started")
            with self._adapter.at_home():
                return self._adapter.traffic.read(now)

    # --- UpdateNetworks (NetworkPort)

    def update_networks(self, request: sm_pb2.UpdateNetworks) -> None:
        """CM's UpdateNetworks (the v5 wire's source of networks)."""
        self.set_networks([Network(n.network_id, n.subnet, n.ip, n.vlan_id) for n in request.networks])

    def set_networks(self, desired: Sequence[Network]) -> None:
        """The full list of provider networks this node must have, from whichever source (a pull
        source of the next contract calls this with what GetNodeNetworkParams returned)."""
        with self._lock, self._home() as adapter:
            networked = {n: a for n, a in self._attachments.items() if a.networked}
            plan = plan_networks(self._networks, desired, networked, self.prerequisites.vlan)
            for refused in plan.refused:
                self._alert(f"UpdateNetworks: {refused}")
            wanted = {n.network_id: n for n in plan.desired}
            for network_id, ops in plan.steps:
                if network_id not in wanted:
                    problems = adapter.run_all(ops)
                    self._networks.pop(network_id, None)
                    for namespace, attachment in networked.items():
                        if attachment.network_id == network_id:
                            self._attachments[namespace] = Attachment(namespace, attachment.instance_id)
                    for problem in problems:
                        self._alert(f"UpdateNetworks: removing network {network_id}: {problem}")
                    continue
                try:
                    adapter.run(ops)
                except Exception as err:
                    self._alert(f"UpdateNetworks: network {network_id} not applied: {err}")
                    continue
                self._networks[network_id] = wanted[network_id]
                self._upstream.pop(network_id, None)  # the server was (re)configured without them
                self._update_upstream(adapter, wanted[network_id])
            for network_id, instances in plan.detached:
                if instances:
                    self._alert(f"network {network_id} removed: instances detached (loopback only): "
                                f"{', '.join(instances)}")
                else:
                    log.info("network %s removed", network_id)
            for network in plan.desired:
                if network.vlan_id and not self.prerequisites.vlan and network.network_id in self._networks:
                    self._alert(f"network {network.network_id}: VLAN {network.vlan_id} not created "
                                f"(no 8021q in this kernel): it does not span nodes")
            self._save()

    # --- instances (the launcher's port)

    def attach(self, request: AttachRequest, run: int) -> InstanceNetwork:
        """The instance's namespace, networked as requested; on any failure everything done so far
        is rolled back and the error raised (the start fails with it)."""
        with self._lock, self._home() as adapter:
            old = self._attachments.get(request.namespace)
            if old is not None:
                adapter.run_all(self._detach_plan(old))
                self._forget(request.namespace)
            params = request.parameters
            network: Optional[Network] = None
            attachment = Attachment(request.namespace, request.instance_id)
            if params is not None:
                network = self._networks.get(params.network_id)
                if network is None:
                    raise NotFound(f"network {params.network_id} is not on this node (no UpdateNetworks for it)")
                feature = self.prerequisites.missing_for_instance()
                if feature:
                    raise NotSupported(f"network: {feature}")
                attachment = Attachment(request.namespace, request.instance_id, params.network_id, params.ip,
                                        params.dns_servers, params.rules, request.names, request.limits)
                check_attachment(attachment, network)
            # The first instance of a network builds its bridge, VLAN, filter and DNS server.
            first = attachment.networked and attachment.network_id not in self._active()
            ops = plan_attach(attachment, network, first, self.prerequisites.vlan)
            adapter.run(ops)
            self._attachments[request.namespace] = attachment
            if first:
                self._upstream[attachment.network_id] = self._upstream_of(attachment.network_id)
            if network is not None:
                self._update_upstream(adapter, network)
            self._runs[request.namespace] = run
            try:
                self._save()
            except Exception:
                adapter.undo(ops)
                self._forget(request.namespace)
                if first:
                    self._upstream.pop(attachment.network_id, None)
                raise
            files = None
            if network is not None and params is not None:
                files = instance_files(ip=params.ip, network_id=params.network_id, hostname=request.hostname,
                                       gateway=network.ip, dns_servers=params.dns_servers)
            return InstanceNetwork(adapter.namespaces.path(request.namespace), files)

    def detach(self, namespace: str, run: int) -> None:
        """Undo the attach; a detach of an older run than the attach in place is stale: ignored."""
        with self._lock:
            attachment = self._attachments.get(namespace)
            if attachment is None or self._adapter is None or self._runs.get(namespace, 0) > run:
                return
            with self._adapter.at_home():
                problems = self._adapter.run_all(self._detach_plan(attachment))
            self._forget(namespace)
            self._save()
            if problems:
                self._alert(f"network: detaching {attachment.instance_id or namespace}: {'; '.join(problems)}")

    def keep_only(self, namespaces: Set[str]) -> None:
        """After a restart: detach what no kept instance owns, and remove everything of ours that
        nothing stored owns (links by our name patterns, namespaces with our prefix, our chains)."""
        with self._lock:
            if self._adapter is None:
                return
            with self._adapter.at_home():
                self._keep_only(self._adapter, namespaces)

    def _keep_only(self, adapter: Adapter, namespaces: Set[str]) -> None:
        for namespace in [n for n in self._attachments if n not in namespaces]:
            self.detach(namespace, self._runs.get(namespace, 0))
        active = [n for n in self._networks.values() if n.network_id in self._active()]
        owned_links = {n.bridge for n in active} | {n.vlan for n in active if n.vlan_id} | \
            {a.veth for a in self._attachments.values() if a.networked}
        for link in adapter.rtnl.links():
            if OUR_LINK.match(link.name) and link.name not in owned_links:
                log.warning("network: link %s belongs to nothing stored: removed", link.name)
                adapter.rtnl.delete_link(link.name)
        # Exactly a container id of this agent (<prefix><16 hex>): a bare prefix test would also
        # take another agent's, whose cgroup parent merely starts like ours ("aos-sm-test-…").
        ours = re.compile(re.escape(self._prefix) + r"[0-9a-f]{16}$")
        for name in adapter.namespaces.names():
            if ours.match(name) and name not in self._attachments:
                log.warning("network: namespace %s belongs to nothing stored: removed", name)
                adapter.namespaces.delete(name)
        self._remove_stray_chains(adapter)
        adapter.dns.adopt(self._active())
        adapter.traffic.adopt({n for n, a in self._attachments.items() if a.networked})

    def _remove_stray_chains(self, adapter: Adapter) -> None:
        active = self._active()
        owned = {network_chain_name(n) for n in active}
        for attachment in self._attachments.values():
            if attachment.networked:
                owned |= {attachment.chain + "-out", attachment.chain + "-in"}
        stray = [c for c in adapter.chains() if c.startswith(("inst-", "net-")) and c not in owned]
        if not stray:
            return
        # The maps may still jump to them: empty the maps, drop the strays and refill, one batch.
        lines = [f"flush map {firewall.TABLE} {m}" for m in ("from_instance", "to_instance", "from_bridge")]
        lines += [f"flush chain {firewall.TABLE} {c}\ndelete chain {firewall.TABLE} {c}" for c in stray]
        for network in self._networks.values():
            if network.network_id not in active:
                continue
            lines.append(f"add element {firewall.TABLE} from_bridge {{ \"{network.bridge}\" : "
                         f"jump {network_chain_name(network.network_id)} }}")
        for attachment in self._attachments.values():
            if attachment.networked:
                lines.append(f"add element {firewall.TABLE} from_instance {{ {attachment.ip} : jump {attachment.chain}-out }}")
                lines.append(f"add element {firewall.TABLE} to_instance {{ {attachment.ip} : jump {attachment.chain}-in }}")
        log.warning("network: chains belonging to nothing stored removed: %s", ", ".join(stray))
        adapter.nft.run("\n".join(lines) + "\n")

    # --- reading (tests, probe)

    def networks(self) -> Dict[str, Network]:
        with self._lock:
            return dict(self._networks)

    def attachments(self) -> Dict[str, Attachment]:
        with self._lock:
            return dict(self._attachments)

    # --- internals

    def _active(self) -> Set[str]:
        """The stored networks with an instance attached here: those whose objects exist."""
        return {a.network_id for a in self._attachments.values() if a.networked and a.network_id in self._networks}

    def _detach_plan(self, attachment: Attachment) -> List[Op]:
        """The detach of a stored attachment; the last of its network also takes the network's
        objects down (and forgets the upstream servers its DNS server had)."""
        network = self._networks.get(attachment.network_id)
        last = attachment.networked and network is not None and not any(
            a.network_id == attachment.network_id for n, a in self._attachments.items()
            if n != attachment.namespace and a.networked)
        if last:
            self._upstream.pop(attachment.network_id, None)
        return plan_detach(attachment, network, last)

    def _update_upstream(self, adapter: Adapter, network: Network) -> None:
        """dnsmasq's upstream servers: the ``dns_servers`` CM gave the network's instances."""
        upstream = self._upstream_of(network.network_id)
        if upstream and self._upstream.get(network.network_id) != upstream:
            self._upstream[network.network_id] = upstream
            try:
                adapter.dns.set_network(network.network_id, network.bridge, network.ip, upstream)
            except Exception as err:
                log.warning("network %s: upstream DNS servers not set: %s", network.network_id, err)

    def _upstream_of(self, network_id: str) -> Tuple[str, ...]:
        return tuple(dict.fromkeys(server for a in self._attachments.values()
                                   if a.network_id == network_id for server in a.dns_servers))

    @contextlib.contextmanager
    def _home(self) -> Iterator[Adapter]:
        """The adapter, with the calling thread in the managed namespace for the block."""
        if self._adapter is None:
            raise NotSupported(self._problem or "network manager not started")
        with self._adapter.at_home():
            yield self._adapter

    def _forget(self, namespace: str) -> None:
        self._attachments.pop(namespace, None)
        self._runs.pop(namespace, None)

    def _alert(self, text: str) -> None:
        log.error("%s", text)
        self._sender.send(core_alert(text))

    def _load(self) -> None:
        try:
            data = json.loads(self._state_path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as err:
            self._alert(f"network state {self._state_path} unreadable ({err}): starting empty")
            return
        try:
            for item in data.get("networks", []):
                network = Network(**item)
                self._networks[network.network_id] = network
            for item in data.get("attachments", []):
                run = int(item.pop("run", 0))
                item["rules"] = tuple(Rule(**rule) for rule in item.get("rules", ()))
                item["limits"] = Limits(**item.get("limits", {}))
                for key in ("dns_servers", "names"):
                    item[key] = tuple(item.get(key, ()))
                attachment = Attachment(**item)
                self._attachments[attachment.namespace] = attachment
                self._runs[attachment.namespace] = run
        except (TypeError, ValueError, AttributeError) as err:
            self._alert(f"network state {self._state_path} malformed ({err}): starting empty")
            self._networks.clear()
            self._attachments.clear()

    def _save(self) -> None:
        self._root.mkdir(parents=True, exist_ok=True)
        attachments = []
        for namespace, attachment in self._attachments.items():
            item = asdict(attachment)
            item["run"] = self._runs.get(namespace, 0)
            attachments.append(item)
        data = {"networks": [asdict(n) for n in self._networks.values()], "attachments": attachments}
        write_atomic(self._state_path, json.dumps(data, indent=1).encode(), 0o600)



class TrafficReader:
    """monitoring's TrafficPort: ``read(now)`` through the manager."""

    def __init__(self, manager: NetworkManager) -> None:
        self._manager = manager

    def read(self, now: float) -> Any:
        return self._manager.read_traffic(now)

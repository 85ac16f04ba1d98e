"""The nftables scripts of our one table, ``inet aos-sm``. Pure: text in, text out.

Layout (every chain and map here is ours; ``acct*`` ones belong to the traffic accounting):
- ``forward`` (filter, forward hook, policy accept: we never decide other traffic of the node):
  ``ip saddr vmap @from_instance`` first, then ``ip daddr vmap @to_instance``. An instance's egress chain
  accepts what it may open (its own network, CM's rules, the public internet) and drops the rest
  towards private ranges, ICMP included; its ingress chain accepts replies, its own network, and
  drops the rest. Because the source's egress verdict comes first, a CM rule opens one flow end to
  end whatever the target's inbound defaults (NETWORK.md: the reference v9.0.0 dropped them).
- ``input`` (filter, input hook, policy accept): ``iifname vmap @from_bridge``: from a network's
  bridge only replies and the gateway address (DNS) reach the node.
- ``postrouting`` (nat): one masquerade rule per network, found by its comment and deleted by
  handle.
Each change is one script, applied by libnftables as one atomic transaction.
"""

from __future__ import annotations

from typing import Iterable, List

from .instance import Rule
from .plan import Attachment, Network, network_chain_name

TABLE = "inet aos-sm"
# RFC 1918, and CM's pools (172.17-172.31 are inside 172.16/12): "other subnets" an instance
# reaches only through a rule (NETWORK.md: Firewall).
PRIVATE = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
_PRIVATE_SET = "{ " + ", ".join(PRIVATE) + " }"


def _quote(text: str) -> str:
    return '"' + text.replace('"', "") + '"'


def base_script() -> str:
    """Idempotent: the table, our base chains and maps (``add`` of an existing one is a no-op)."""
    return "\n".join([
        f"add table {TABLE}",
        f"add map {TABLE} from_instance {{ type ipv4_addr : verdict; }}",
        f"add map {TABLE} to_instance {{ type ipv4_addr : verdict; }}",
        f"add map {TABLE} from_bridge {{ type ifname : verdict; }}",
        f"add chain {TABLE} forward {{ type filter hook forward priority filter; policy accept; }}",
        f"add chain {TABLE} input {{ type filter hook input priority filter; policy accept; }}",
        f"add chain {TABLE} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}",
    ]) + "\n"


def base_rules_script() -> str:
    """The dispatch rules of the base chains; after ``flush chain`` of each (restart rebuild)."""
    return "\n".join([
        f"flush chain {TABLE} forward",
        f"flush chain {TABLE} input",
        f"add rule {TABLE} forward ip saddr vmap @from_instance",
        f"add rule {TABLE} forward ip daddr vmap @to_instance",
        f"add rule {TABLE} input iifname vmap @from_bridge",
    ]) + "\n"


def masquerade_comment(network_id: str) -> str:
    return f"aos-sm net {network_id}"[:120]


def add_network_script(network: Network) -> str:
    chain = network_chain_name(network.network_id)
    return "\n".join([
        f"add chain {TABLE} {chain}",
        f"flush chain {TABLE} {chain}",
        f"add rule {TABLE} {chain} ct state established,related accept",
        f"add rule {TABLE} {chain} ip daddr {network.ip} accept",
        f"add rule {TABLE} {chain} drop",
        f"add element {TABLE} from_bridge {{ {_quote(network.bridge)} : jump {chain} }}",
        f"add rule {TABLE} postrouting ip saddr {network.subnet} ip daddr != {network.subnet} masquerade "
        f"comment {_quote(masquerade_comment(network.network_id))}",
    ]) + "\n"


def remove_network_script(network: Network, masquerade_handles: Iterable[int], present: bool) -> str:
    """``present``: the network's chain exists (a delete of a missing one fails the batch)."""
    lines = [f"delete rule {TABLE} postrouting handle {handle}" for handle in masquerade_handles]
    if present:
        chain = network_chain_name(network.network_id)
        lines += [f"delete element {TABLE} from_bridge {{ {_quote(network.bridge)} }}",
                  f"flush chain {TABLE} {chain}", f"delete chain {TABLE} {chain}"]
    return "".join(line + "\n" for line in lines)


def _rule_match(rule: Rule) -> str:
    parts = [f"ip daddr {rule.dst_ip}"]
    if rule.src_ip:
        parts.insert(0, f"ip saddr {rule.src_ip}")
    proto = rule.proto.lower()
    if proto in ("tcp", "udp"):
        parts.append(f"{proto} dport {rule.dst_port}" if rule.dst_port else f"meta l4proto {proto}")
    return " ".join(parts)


def add_instance_script(attachment: Attachment, network: Network) -> str:
    out, inn = attachment.chain + "-out", attachment.chain + "-in"
    lines: List[str] = [
        f"add chain {TABLE} {out}", f"flush chain {TABLE} {out}",
        f"add chain {TABLE} {inn}", f"flush chain {TABLE} {inn}",
        f"add rule {TABLE} {out} ct state established,related accept",
        f"add rule {TABLE} {out} ip daddr {network.subnet} accept",
    ]
    lines += [f"add rule {TABLE} {out} {_rule_match(rule)} accept" for rule in attachment.rules]
    lines += [
        f"add rule {TABLE} {out} ip daddr {_PRIVATE_SET} drop",
        f"add rule {TABLE} {out} accept",
        f"add rule {TABLE} {inn} ct state established,related accept",
        f"add rule {TABLE} {inn} ip saddr {network.subnet} accept",
        f"add rule {TABLE} {inn} drop",
        f"add element {TABLE} from_instance {{ {attachment.ip} : jump {out} }}",
        f"add element {TABLE} to_instance {{ {attachment.ip} : jump {inn} }}",
    ]
    return "\n".join(lines) + "\n"


def remove_instance_script(attachment: Attachment, present: bool) -> str:
    if not present:
        return ""
    out, inn = attachment.chain + "-out", attachment.chain + "-in"
    return "\n".join([
        f"delete element {TABLE} from_instance {{ {attachment.ip} }}",
        f"delete element {TABLE} to_instance {{ {attachment.ip} }}",
        f"flush chain {TABLE} {out}", f"delete chain {TABLE} {out}",
        f"flush chain {TABLE} {inn}", f"delete chain {TABLE} {inn}",
    ]) + "\n"

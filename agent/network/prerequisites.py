"""What the kernel and the board must have for instance networking (NETWORK.md: checked once at
start, said in one CoreAlert and by `aos-sm probe`; an instance that needs a missing feature
fails with that reason).

The checks try the real thing where that is cheap and harmless: link kinds are created in a
throwaway namespace, the nftables features are loaded into a throwaway table of our own. Modules
the kernel loads on demand count as present; this machine's kernel, for one, has no module files
at all (everything built in), so a file lookup would say nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from typing import Callable, Dict, List

from .namespaces import Namespaces
from .nft import Nft
from .rtnl import Rtnl

log = logging.getLogger(__name__)

# What an instance with network parameters cannot do without (the rest degrades: no VLAN is a
# network that does not span nodes, no dnsmasq is no names).
REQUIRED_FOR_INSTANCES = ("bridge", "veth", "nf_tables nat/masquerade/ct", "ip_forward")


@dataclass(frozen=True)
class Prerequisites:
    """``present[feature]`` True/False; ``reasons`` say why a missing one is missing."""

    present: Dict[str, bool] = field(default_factory=dict)
    reasons: Dict[str, str] = field(default_factory=dict)

    @property
    def missing(self) -> List[str]:
        return [name for name, ok in self.present.items() if not ok]

    @property
    def vlan(self) -> bool:
        return self.present.get("8021q", True)

    def summary(self) -> str:
        return "; ".join(f"{name} ({self.reasons.get(name, 'missing')})" for name in self.missing) or "none"

    def missing_for_instance(self) -> str:
        """Why a networked instance cannot start here, or ''."""
        lacking = [name for name in REQUIRED_FOR_INSTANCES if self.present.get(name) is False]
        return "; ".join(f"{name} missing: {self.reasons.get(name, '')}" for name in lacking)


def _link_kinds(namespaces: Namespaces) -> Dict[str, str]:
    """{kind: '' if it can be created, else why}, tried in a throwaway namespace."""
    results: Dict[str, str] = {}
    name = f"aos-sm-probe-{uuid.uuid4().hex[:8]}"
    path = namespaces.create(name)
    try:
        with Rtnl.open_in(path) as inside:
            attempts: Dict[str, Callable[[], None]] = {
                "bridge": lambda: inside.add_bridge("probe-br"),
                "veth": lambda: inside.add_link("probe-v0", "veth"),
                "8021q": lambda: inside.add_vlan("probe-vl", "probe-v0", 7),
                "ifb": lambda: inside.add_link("probe-ifb", "ifb"),
            }
            for kind, attempt in attempts.items():
                try:
                    attempt()
                    results[kind] = ""
                except Exception as err:
                    results[kind] = str(err)
    finally:
        namespaces.delete(name)
    return results


def _nft_features(nft: Nft) -> str:
    table = f"inet aos-sm-probe-{uuid.uuid4().hex[:8]}"
    script = (f"add table {table}\n"
              f"add chain {table} probe_post {{ type nat hook postrouting priority srcnat; }}\n"
              f"add rule {table} probe_post ip saddr 172.16.0.0/12 masquerade\n"
              f"add chain {table} probe_forward {{ type filter hook forward priority filter; }}\n"
              f"add rule {table} probe_forward ct state established,related accept\n")
    try:
        nft.run(script)
    except Exception as err:
        return str(err)
    finally:
        with contextlib.suppress(Exception):
            nft.run(f"delete table {table}\n")
    return ""


def check_prerequisites(nft: Nft, namespaces: Namespaces, ip_forward: str = "/proc/sys/net/ipv4/ip_forward") -> Prerequisites:
    present: Dict[str, bool] = {}
    reasons: Dict[str, str] = {}

    def note(name: str, problem: str) -> None:
        present[name] = not problem
        if problem:
            reasons[name] = problem

    try:
        kinds = _link_kinds(namespaces)
    except Exception as err:
        kinds = {kind: f"no network namespace: {err}" for kind in ("bridge", "veth", "8021q", "ifb")}
    for kind in ("bridge", "veth", "8021q", "ifb"):
        note(kind, kinds.get(kind, "not tried"))
    note("nf_tables nat/masquerade/ct", _nft_features(nft))
    note("dnsmasq", "" if shutil.which("dnsmasq") else "not on PATH")
    note("ip_forward", "" if os.access(ip_forward, os.W_OK) else f"{ip_forward} not writable")
    return Prerequisites(present, reasons)

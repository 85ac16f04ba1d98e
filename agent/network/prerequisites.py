"""What the kernel and the board must have for instance networking (NETWORK.md: checked once at
start, said in one CoreAlert and by `aos-sm probe`; an instance that needs a missing feature
fails with that reason).

The checks try the real thing where that is cheap and harmless: link kinds are created, and the
nftables features loaded, inside a throwaway namespace (nothing of the node's network is touched). Modules
the kernel loads on demand count as present; this machine's kernel, for one, has no module files
at all (everything built in), so a file lookup would say nothing.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import struct
import threading
import uuid
from dataclasses import dataclass, field
from typing import Callable, Dict, List

from .namespaces import Namespaces
from .nft import Nft
from .rtnl import NLM_F_CREATE, NLM_F_EXCL, NetlinkError, Rtnl, attr_str, nested, setns

log = logging.getLogger(__name__)

# What an instance with network parameters cannot do without (the rest degrades: no VLAN is a
# network that does not span nodes, no dnsmasq is no names).
REQUIRED_FOR_INSTANCES = ("bridge", "veth", "nf_tables nat/masquerade/ct/quota/objref", "ip_forward")


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


def _link_kinds(inside: Rtnl) -> Dict[str, str]:
    """{kind: '' if it can be created, else why}."""
    results: Dict[str, str] = {}
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
    return results


# Traffic control (rtnetlink(7), <linux/rtnetlink.h>, <linux/pkt_sched.h>): what shaping needs.
RTM_NEWQDISC, RTM_NEWTFILTER, RTM_NEWACTION = 36, 44, 48
TCA_KIND, TCA_ACT_TAB, TCA_ACT_KIND = 1, 1, 1
TC_H_ROOT, TC_H_INGRESS, INGRESS_HANDLE = 0xFFFFFFFF, 0xFFFFFFF1, 0xFFFF0000
ETH_P_ALL = 0x0003
_TCMSG = struct.Struct("=BxxxiIII")  # family, ifindex, handle, parent, info
_TCAMSG = struct.Struct("=Bxxx")
# A kind the kernel lacks (built in or loadable) is ENOENT; any other answer, success or EINVAL
# for the options these bare requests leave out, means the kernel found the kind. EAGAIN: the
# kernel has just loaded its module and asks for the request again.
_ABSENT = (errno.ENOENT, errno.EOPNOTSUPP)


def _tc_kind(inside: Rtnl, message: int, body: bytes, what: str) -> str:
    for _ in range(2):
        try:
            inside.request(message, NLM_F_CREATE | NLM_F_EXCL, body, what)
            return ""
        except NetlinkError as err:
            if err.errno == errno.EAGAIN:
                continue
            return str(err) if err.errno in _ABSENT else ""
    return f"{what}: the kernel kept asking to retry"


def tc_kinds(inside: Rtnl, qdisc: str = "tbf") -> Dict[str, str]:
    """{tbf, ingress, mirred, u32: '' if the kernel has it, else why}, tried on ``lo`` of the
    namespace ``inside`` talks to. ``qdisc`` names the root qdisc tried as "tbf" (tests pass a
    kind no kernel has, to see the absence reported)."""
    lo = inside.index("lo")
    found = {
        "tbf": _tc_kind(inside, RTM_NEWQDISC, _TCMSG.pack(0, lo, 0x10000, TC_H_ROOT, 0) + attr_str(TCA_KIND, qdisc),
                        f"{qdisc} qdisc"),
        "ingress": _tc_kind(inside, RTM_NEWQDISC, _TCMSG.pack(0, lo, INGRESS_HANDLE, TC_H_INGRESS, 0)
                            + attr_str(TCA_KIND, "ingress"), "ingress qdisc"),
    }
    # The filter hangs on the ingress qdisc: without it, say so rather than a misleading u32 error.
    info = (1 << 16) | socket_htons(ETH_P_ALL)
    found["u32"] = _tc_kind(inside, RTM_NEWTFILTER, _TCMSG.pack(0, lo, 0, INGRESS_HANDLE, info)
                            + attr_str(TCA_KIND, "u32"), "u32 filter") if not found["ingress"] else "needs ingress"
    found["mirred"] = _tc_kind(inside, RTM_NEWACTION, _TCAMSG.pack(0)
                               + nested(TCA_ACT_TAB, nested(1, attr_str(TCA_ACT_KIND, "mirred"))), "mirred action")
    return found


def socket_htons(value: int) -> int:
    return int.from_bytes(value.to_bytes(2, "big"), "little")


def _nft_features(nft: Nft) -> str:
    table = "inet aos-sm-probe"
    script = (f"add table {table}\n"
              f"add chain {table} probe_post {{ type nat hook postrouting priority srcnat; }}\n"
              f"add rule {table} probe_post ip saddr 172.16.0.0/12 masquerade\n"
              f"add chain {table} probe_forward {{ type filter hook forward priority filter; }}\n"
              f"add rule {table} probe_forward ct state established,related accept\n"
              # Traffic accounting's named counters and quotas (nft_objref, nft_quota).
              f"add counter {table} probe_counter\n"
              f"add quota {table} probe_quota {{ over 1 bytes }}\n"
              f"add rule {table} probe_forward counter name probe_counter\n"
              f"add rule {table} probe_forward quota name probe_quota drop\n")
    try:
        nft.run(script)
    except Exception as err:
        return str(err)
    return ""


def _probe_inside(path: str) -> Dict[str, str]:
    """Link kinds and nftables features, tried on a thread inside a throwaway namespace: nothing
    of the node's own network (links, firewall) is touched, and the namespace takes it all away."""
    found: Dict[str, str] = {}

    def body() -> None:
        try:
            with open(path, "rb") as target:
                setns(target.fileno())
            with Rtnl() as inside:
                found.update(_link_kinds(inside))
                found.update(tc_kinds(inside))
            nft = Nft()
            try:
                found["nf_tables nat/masquerade/ct/quota/objref"] = _nft_features(nft)
            finally:
                nft.close()
        except Exception as err:
            found.setdefault("bridge", f"probe failed: {err}")

    thread = threading.Thread(target=body, name="network-probe", daemon=True)
    thread.start()
    thread.join()
    return found


FEATURES = ("bridge", "veth", "8021q", "ifb", "tbf", "ingress", "mirred", "u32",
            "nf_tables nat/masquerade/ct/quota/objref", "dnsmasq", "ip_forward")
_KERNEL = FEATURES[:-2]  # tried in the throwaway namespace; the last two are files on the board


def check_prerequisites(namespaces: Namespaces, ip_forward: str = "/proc/sys/net/ipv4/ip_forward") -> Prerequisites:
    """Each of FEATURES present or not, with why."""
    present: Dict[str, bool] = {}
    reasons: Dict[str, str] = {}

    def note(name: str, problem: str) -> None:
        present[name] = not problem
        if problem:
            reasons[name] = problem

    name = f"aos-sm-probe-{uuid.uuid4().hex[:8]}"
    try:
        path = namespaces.create(name)
        try:
            found = _probe_inside(str(path))
        finally:
            namespaces.delete(name)
    except Exception as err:
        found = {feature: f"no network namespace: {err}" for feature in _KERNEL}
    for feature in _KERNEL:
        note(feature, found.get(feature, "not tried"))
    note("dnsmasq", "" if shutil.which("dnsmasq") else "not on PATH")
    note("ip_forward", "" if os.access(ip_forward, os.W_OK) else f"{ip_forward} not writable")
    return Prerequisites(present, reasons)

"""Traffic accounting and daily limits in nftables (NETWORK.md, "Traffic accounting and limits").

Everything lives in our table ``inet aos-sm``; this module owns the objects whose names start
with ``acct`` and nothing else in it (the firewall owns the rest). It never flushes or deletes the
table, and deletes its own rules by handle.

- ``acct-private`` (``acct-private6``): the address ranges not counted: 127/8, 10/8, 172.16/12
  (which holds CM's pools 172.17–172.31) and 192.168/16; for IPv6 loopback, link-local and ULA.
- ``acct-input`` / ``acct-output``: base chains on the host's input and output hooks counting
  the node's own public traffic into the named counters ``acct-node-down`` / ``acct-node-up``.
- ``acct-forward``: a base chain on the forward hook; per instance (``acct-i-<12 hex of its id>``)
  a counter per direction over public traffic to (download) and from (upload) its IP, preceded,
  when the item config sets ``downloadLimit``/``uploadLimit``, by a ``quota over <limit> bytes
  drop`` rule: the kernel itself cuts that direction at the limit, to the byte, until the agent
  resets the quota when the day changes.

The chains hook at priority ``filter + 10``: after the firewall's filter chains, so a packet the
firewall drops is neither counted nor charged to a quota. Forwarded traffic is seen before
masquerade (postrouting) and after de-NAT of replies (prerouting): the instance's own IP.

Period totals (:mod:`traffic_period`) are kept in ``state_path`` (atomic writes), so the day's
bytes survive an agent restart and a reboot (a quota re-created after a reboot starts with the
bytes already used).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Set, Tuple

from ..atomic import write_atomic
from ..errors import InvalidArgument
from .nft import Nft, NftError
from .traffic_period import NODE, Bytes, Period, accumulate, advance, forget, from_json, to_json

log = logging.getLogger(__name__)

TABLE = "inet aos-sm"
PREFIX = "acct"
PRIVATE_V4 = ("127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
PRIVATE_V6 = ("::1/128", "fe80::/10", "fc00::/7")
NODE_DOWN, NODE_UP = "acct-node-down", "acct-node-up"
_INSTANCE_PREFIX = "acct-i-"
_PRIORITY = "filter + 10"


@dataclass(frozen=True)
class InstanceTraffic:
    """An instance's public bytes in the current period and its limits (None: unlimited).

    ``download_cut`` / ``upload_cut``: the limit is used up and the kernel drops that direction.
    The counted bytes can stay just below the limit then (the packet that would cross it is
    dropped, not counted), so this, not ``download >= download_limit``, says the limit is reached.
    """

    download: int
    upload: int
    download_limit: Optional[int] = None
    upload_limit: Optional[int] = None
    download_cut: bool = False
    upload_cut: bool = False


@dataclass(frozen=True)
class TrafficReading:
    """Bytes in the current period: the node's own and each instance's."""

    node: Bytes
    instances: Mapping[str, InstanceTraffic]

    def node_reported(self) -> Bytes:
        """NETWORK.md: node download/upload = max(node counters, sum of instances)."""
        download = sum(item.download for item in self.instances.values())
        upload = sum(item.upload for item in self.instances.values())
        return Bytes(max(self.node.download, download), max(self.node.upload, upload))


@dataclass(frozen=True)
class _Instance:
    ip: str
    download_limit: Optional[int]
    upload_limit: Optional[int]


def instance_tag(instance_id: str) -> str:
    """The name stem of an instance's objects: ``acct-i-`` + 12 hex digits of its id (ids may be
    long or hold characters nft names cannot)."""
    return _INSTANCE_PREFIX + hashlib.sha256(instance_id.encode()).hexdigest()[:12]


def _check_ipv4(ip: str) -> str:
    import ipaddress

    try:
        return str(ipaddress.IPv4Address(ip))
    except ValueError as err:
        raise InvalidArgument(f"traffic: {ip!r} is not an IPv4 address") from err


def _check_limit(limit: Optional[int], key: str) -> Optional[int]:
    if limit is not None and (not isinstance(limit, int) or limit <= 0):
        raise InvalidArgument(f"item config quotas.{key}: {limit!r} is not a byte count")
    return limit


@dataclass
class _Snapshot:
    """Our objects in the table, from one ``list table`` (counters and quotas by name; per chain
    the (handle, object name) of each rule that uses a named counter or quota)."""

    counters: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    quotas: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    rules: Dict[str, List[Tuple[int, str]]] = field(default_factory=dict)

    def rule_names(self, chain: str) -> Set[str]:
        return {name for _, name in self.rules.get(chain, [])}


def _parse_table(listing: Dict[str, Any]) -> _Snapshot:
    snapshot = _Snapshot()
    for item in listing.get("nftables", []):
        if not isinstance(item, dict):
            continue
        for kind, into in (("counter", snapshot.counters), ("quota", snapshot.quotas)):
            body = item.get(kind)
            if isinstance(body, dict) and str(body.get("name", "")).startswith(PREFIX):
                into[str(body["name"])] = body
        rule = item.get("rule")
        if isinstance(rule, dict) and str(rule.get("chain", "")).startswith(PREFIX):
            for expression in rule.get("expr", []):
                for kind in ("counter", "quota"):
                    name = expression.get(kind) if isinstance(expression, dict) else None
                    if isinstance(name, str):
                        snapshot.rules.setdefault(str(rule["chain"]), []).append((int(rule["handle"]), name))
    return snapshot


class Traffic:
    """The accounting of one node. Thread-safe: the monitor reads while the launcher attaches.

    ``save_interval``: the state file is written at most that often by :meth:`read` (seconds of
    the ``now`` it is given; every change of instances is written at once). Between writes the
    kernel counters keep counting, and a restarted agent takes their growth since the stored
    reading, so only a reboot can lose that much of the day's bytes; flash is spared a write per
    poll.
    """

    def __init__(self, nft: Nft, state_path: Path, save_interval: float = 300.0) -> None:
        self._nft = nft
        self._state_path = state_path
        self._save_interval = save_interval
        self._saved_at: Optional[float] = None
        self._lock = threading.RLock()
        self._period: Optional[Period] = None
        self._instances: Dict[str, _Instance] = {}
        self._load()

    # --- state file --------------------------------------------------------------------------

    def _load(self) -> None:
        try:
            data = json.loads(self._state_path.read_bytes())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as err:
            log.warning("traffic: state %s unreadable (%s); the day's totals restart at zero",
                        self._state_path, err)
            return
        if not isinstance(data, dict):
            return
        self._period = from_json(data.get("period"))
        instances = data.get("instances")
        if isinstance(instances, dict):
            for instance_id, entry in instances.items():
                try:
                    self._instances[str(instance_id)] = _Instance(
                        _check_ipv4(entry["ip"]), _check_limit(entry.get("downloadLimit"), "downloadLimit"),
                        _check_limit(entry.get("uploadLimit"), "uploadLimit"))
                except (KeyError, TypeError, InvalidArgument):
                    log.warning("traffic: dropping unreadable stored instance %s", instance_id)

    def _save(self) -> None:
        data = {
            "period": to_json(self._period) if self._period is not None else None,
            "instances": {instance_id: {"ip": item.ip, "downloadLimit": item.download_limit,
                                        "uploadLimit": item.upload_limit}
                          for instance_id, item in self._instances.items()},
        }
        self._state_path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self._state_path, json.dumps(data, sort_keys=True).encode(), 0o600)

    # --- setup -------------------------------------------------------------------------------

    def setup(self) -> None:
        """Create (idempotently) the table, sets, chains, node counters and node rules."""
        script = [
            f"add table {TABLE}",
            f"add set {TABLE} acct-private {{ type ipv4_addr; flags interval; }}",
            f"add element {TABLE} acct-private {{ {', '.join(PRIVATE_V4)} }}",
            f"add set {TABLE} acct-private6 {{ type ipv6_addr; flags interval; }}",
            f"add element {TABLE} acct-private6 {{ {', '.join(PRIVATE_V6)} }}",
            f"add counter {TABLE} {NODE_DOWN}",
            f"add counter {TABLE} {NODE_UP}",
        ]
        for chain, hook in (("acct-input", "input"), ("acct-output", "output"), ("acct-forward", "forward")):
            script.append(f"add chain {TABLE} {chain} {{ type filter hook {hook} priority {_PRIORITY}; "
                          "policy accept; }")
        with self._lock:
            self._nft.run("\n".join(script) + "\n")
            snapshot = self._snapshot()
            rules = []
            if NODE_DOWN not in snapshot.rule_names("acct-input"):
                rules += [f'add rule {TABLE} acct-input ip saddr != @acct-private counter name "{NODE_DOWN}"',
                          f'add rule {TABLE} acct-input ip6 saddr != @acct-private6 counter name "{NODE_DOWN}"']
            if NODE_UP not in snapshot.rule_names("acct-output"):
                rules += [f'add rule {TABLE} acct-output ip daddr != @acct-private counter name "{NODE_UP}"',
                          f'add rule {TABLE} acct-output ip6 daddr != @acct-private6 counter name "{NODE_UP}"']
            if rules:
                self._nft.run("\n".join(rules) + "\n")

    def _snapshot(self) -> _Snapshot:
        return _parse_table(self._nft.query(f"list table {TABLE}"))

    # --- instances ---------------------------------------------------------------------------

    def add_instance(self, instance_id: str, ip: str, download_limit: Optional[int],
                     upload_limit: Optional[int]) -> None:
        """Count the instance's public traffic and enforce its limits; idempotent, and a call with
        new limits or a new IP replaces the old ones without losing the day's bytes."""
        wanted = _Instance(_check_ipv4(ip), _check_limit(download_limit, "downloadLimit"),
                           _check_limit(upload_limit, "uploadLimit"))
        with self._lock:
            snapshot = self._snapshot()
            if self._instances.get(instance_id) == wanted and self._installed(instance_id, wanted, snapshot):
                return  # adopted as it is
            self._install(instance_id, wanted, snapshot)
            self._instances[instance_id] = wanted
            self._save()
        log.info("traffic: counting %s (%s), limits down %s up %s", instance_id, wanted.ip,
                 wanted.download_limit, wanted.upload_limit)

    @staticmethod
    def _installed(instance_id: str, item: _Instance, snapshot: _Snapshot) -> bool:
        tag = instance_tag(instance_id)
        wanted = {f"{tag}-down", f"{tag}-up"}
        wanted |= {f"{tag}-down-q"} if item.download_limit is not None else set()
        wanted |= {f"{tag}-up-q"} if item.upload_limit is not None else set()
        return snapshot.rule_names("acct-forward") >= wanted and set(snapshot.counters) >= {f"{tag}-down", f"{tag}-up"}

    def _install(self, instance_id: str, item: _Instance, snapshot: _Snapshot) -> None:
        """(Re)create the instance's rules and quotas, keeping its counters (one batch)."""
        tag = instance_tag(instance_id)
        used = self._period.total(instance_id) if self._period is not None else Bytes()
        script = [f"delete rule {TABLE} acct-forward handle {handle}"
                  for handle, name in snapshot.rules.get("acct-forward", []) if name.startswith(tag)]
        script += [f"delete quota {TABLE} {name}" for name in snapshot.quotas if name.startswith(tag)]
        script += [f"add counter {TABLE} {tag}-down", f"add counter {TABLE} {tag}-up"]
        for direction, limit, own, other, carried in (
                ("down", item.download_limit, "daddr", "saddr", used.download),
                ("up", item.upload_limit, "saddr", "daddr", used.upload)):
            match = f"ip {own} {item.ip} ip {other} != @acct-private"
            if limit is not None:
                # The kernel's own count wins over the stored one when the table outlived the
                # agent: it also holds the bytes since the last reading.
                kernel_used = snapshot.quotas.get(f"{tag}-{direction}-q", {}).get("used")
                start = max(carried, kernel_used if isinstance(kernel_used, int) else 0)
                script.append(f"add quota {TABLE} {tag}-{direction}-q {{ over {limit} bytes used {start} bytes }}")
                script.append(f'add rule {TABLE} acct-forward {match} quota name "{tag}-{direction}-q" drop')
            script.append(f'add rule {TABLE} acct-forward {match} counter name "{tag}-{direction}"')
        self._nft.run("\n".join(script) + "\n")

    def remove_instance(self, instance_id: str) -> None:
        """Stop counting and limiting the instance; its bytes so far stay in the day's totals (a
        restarted instance continues its quota)."""
        with self._lock:
            snapshot = self._snapshot()
            self._fold(snapshot)
            self._delete_tags({instance_tag(instance_id)}, snapshot)
            self._instances.pop(instance_id, None)
            if self._period is not None:
                self._period = forget(self._period, instance_id)
            self._save()

    def adopt(self, keep_instances: Set[str]) -> None:
        """At agent start: keep the objects of ``keep_instances``; delete every other instance's."""
        keep_tags = {instance_tag(instance_id) for instance_id in keep_instances}
        with self._lock:
            snapshot = self._snapshot()
            self._fold(snapshot)
            names = list(snapshot.counters) + list(snapshot.quotas) + \
                [name for _, name in snapshot.rules.get("acct-forward", [])]
            tags = {_tag_of(name) for name in names if name.startswith(_INSTANCE_PREFIX)}
            stray = tags - keep_tags
            if stray:
                self._delete_tags(stray, snapshot)
                log.info("traffic: removed the counters of %d instances no longer here", len(stray))
            for instance_id in [i for i in self._instances if i not in keep_instances]:
                del self._instances[instance_id]
            self._save()

    def _delete_tags(self, tags: Set[str], snapshot: _Snapshot) -> None:
        script = [f"delete rule {TABLE} acct-forward handle {handle}"
                  for handle, name in sorted(set(snapshot.rules.get("acct-forward", []))) if _tag_of(name) in tags]
        script += [f"delete quota {TABLE} {name}" for name in snapshot.quotas if _tag_of(name) in tags]
        script += [f"delete counter {TABLE} {name}" for name in snapshot.counters if _tag_of(name) in tags]
        if script:
            self._nft.run("\n".join(script) + "\n")

    # --- reading -----------------------------------------------------------------------------

    def _kernel_counters(self, snapshot: _Snapshot) -> Dict[str, Bytes]:
        counters = {name: int(body.get("bytes", 0)) for name, body in snapshot.counters.items()}
        readings: Dict[str, Bytes] = {}
        if NODE_DOWN in counters or NODE_UP in counters:
            readings[NODE] = Bytes(counters.get(NODE_DOWN, 0), counters.get(NODE_UP, 0))
        for instance_id in self._instances:
            tag = instance_tag(instance_id)
            if f"{tag}-down" in counters or f"{tag}-up" in counters:
                readings[instance_id] = Bytes(counters.get(f"{tag}-down", 0), counters.get(f"{tag}-up", 0))
        return readings

    def _fold(self, snapshot: _Snapshot, now: Optional[float] = None) -> bool:
        """Add the kernel counters' growth to the period; with ``now`` the day may roll. Returns
        whether it rolled."""
        kernel = self._kernel_counters(snapshot)
        if now is None:
            if self._period is not None:
                self._period = accumulate(self._period, kernel)
            return False
        self._period, rolled = advance(self._period, kernel, now)
        return rolled

    def _repaired_snapshot(self) -> _Snapshot:
        """The table as it is, after putting back what someone removed (a peer that flushed the
        ruleset, a table deleted by hand): the node's chains and every instance's rules, their
        quotas starting from the day's bytes."""
        try:
            snapshot = self._snapshot()
        except NftError:
            snapshot = _Snapshot()
        if not {NODE_DOWN, NODE_UP} <= set(snapshot.counters) or \
                NODE_DOWN not in snapshot.rule_names("acct-input") or NODE_UP not in snapshot.rule_names("acct-output"):
            log.warning("traffic: the accounting chains of %s were gone; re-created", TABLE)
            self.setup()
            snapshot = self._snapshot()
        broken = [i for i, item in self._instances.items() if not self._installed(i, item, snapshot)]
        for instance_id in broken:
            log.warning("traffic: the counters of %s were gone; re-created", instance_id)
            self._install(instance_id, self._instances[instance_id], snapshot)
        return self._snapshot() if broken else snapshot

    def read(self, now: float) -> TrafficReading:
        """The period's bytes at ``now`` (seconds since the epoch, UTC day boundaries). At the
        first reading of a new day the totals restart and the quotas are reset, so a limited
        direction flows again."""
        with self._lock:
            snapshot = self._repaired_snapshot()
            rolled = self._fold(snapshot, now)
            if rolled:
                quotas = [name for name in snapshot.quotas if name.startswith(_INSTANCE_PREFIX)]
                if quotas:
                    self._nft.run("".join(f"reset quota {TABLE} {name}\n" for name in quotas))
                    snapshot = self._snapshot()
                log.info("traffic: a new period began (%s); totals and quotas reset",
                         self._period.day if self._period else "?")
            if rolled or self._saved_at is None or not 0 <= now - self._saved_at < self._save_interval:
                self._save()
                self._saved_at = now
            period = self._period
            instances = dict(self._instances)
        assert period is not None
        used = {name: int(body.get("used", 0)) for name, body in snapshot.quotas.items()}

        def cut(instance_id: str, direction: str, limit: Optional[int]) -> bool:
            return limit is not None and used.get(f"{instance_tag(instance_id)}-{direction}-q", 0) >= limit

        return TrafficReading(period.total(NODE), {
            instance_id: InstanceTraffic(
                period.total(instance_id).download, period.total(instance_id).upload,
                item.download_limit, item.upload_limit,
                cut(instance_id, "down", item.download_limit), cut(instance_id, "up", item.upload_limit))
            for instance_id, item in instances.items()})

    def close(self) -> None:
        """At agent stop: store the day's bytes now (a reboot after a clean stop loses none)."""
        with self._lock:
            try:
                self._fold(self._snapshot())
            except NftError as err:
                log.warning("traffic: final reading failed (%s); storing the last one", err)
            self._save()

    def instances(self) -> Iterable[str]:
        with self._lock:
            return list(self._instances)


def _tag_of(name: str) -> str:
    return name[:len(_INSTANCE_PREFIX) + 12]

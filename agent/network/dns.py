"""Instance names in DNS: one supervised dnsmasq per provider network (NETWORK.md, "DNS").

Each network's dnsmasq listens only on the bridge address (``listen-address`` with
``bind-dynamic``: it binds as soon as the address exists, so a bridge re-created after a reboot is
no race), serves no DHCP, answers the instance names from its own hosts file and forwards the rest
to the instances' ``dns_servers``. Its state lives in ``<state_dir>/<network>/``:

- ``dnsmasq.conf``: the configuration (a change of bridge, address or upstream restarts it);
- ``hosts``: one line per instance, ``<ip> <names>``, replaced atomically and re-read on SIGHUP,
  so a name added or removed never restarts the server;
- ``network.json``: what the agent asked for (bridge, address, upstream, names per instance), so a
  restarted agent re-owns the server without CM's help;
- ``dnsmasq.pid``: the server's pid, for :meth:`DnsService.adopt` after an agent restart.

Supervision: :meth:`DnsService.check` restarts every server that died (with a backoff per network
of 1 s doubling to 30 s, so a server that cannot start does not spin); a thread calls it every
``check_interval`` seconds unless ``supervise=False`` (tests call it themselves). Servers run in
their own session and are not stopped by :meth:`close`: DNS keeps working while the agent
restarts, and the next agent adopts them.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

from ..atomic import write_atomic
from ..errors import AlreadyExist, InvalidArgument, NotFound, RuntimeFailure

log = logging.getLogger(__name__)

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
_BACKOFF_FIRST, _BACKOFF_MAX = 1.0, 30.0
_STOP_WAIT = 3.0


def instance_names(item_id: str, subject_id: str, instance_index: int, network_id: str,
                   hostname: Optional[str]) -> List[str]:
    """NETWORK.md "DNS": ``<instance>.<subject>.<item>``, for instance 0 also ``<subject>.<item>``,
    each also with the suffix ``.<network_id>``, plus the item config's ``hostname``."""
    bases = [f"{instance_index}.{subject_id}.{item_id}"]
    if instance_index == 0:
        bases.append(f"{subject_id}.{item_id}")
    names = bases + ([f"{base}.{network_id}" for base in bases] if network_id else [])
    if hostname:
        names.append(hostname)
    unique: List[str] = []
    for name in names:
        if name.lower() not in (seen.lower() for seen in unique):
            unique.append(name)
    return unique


def _check_name(name: str) -> str:
    labels = name.rstrip(".").split(".")
    if not name or len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise InvalidArgument(f"DNS name {name!r} is not a host name")
    return name.rstrip(".")


def _check_ip(ip: str, what: str) -> str:
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError as err:
        raise InvalidArgument(f"{what} {ip!r} is not an IP address") from err


def _directory_name(network_id: str) -> str:
    if _SAFE_NAME.match(network_id) and network_id not in (".", ".."):
        return network_id
    return "net-" + hashlib.sha256(network_id.encode()).hexdigest()[:16]


@dataclass
class _Network:
    network_id: str
    directory: Path
    bridge: str
    address: str
    upstream: Tuple[str, ...]
    hosts: Dict[str, Tuple[str, Tuple[str, ...]]] = field(default_factory=dict)
    child: Optional["subprocess.Popen[bytes]"] = None
    pid: Optional[int] = None  # the server's pid, ours (child) or adopted
    failures: int = 0
    next_start: float = 0.0

    @property
    def conf(self) -> Path:
        return self.directory / "dnsmasq.conf"

    def to_json(self) -> Dict[str, object]:
        return {"networkId": self.network_id, "bridge": self.bridge, "address": self.address,
                "upstream": list(self.upstream),
                "hosts": {instance: {"ip": ip, "names": list(names)}
                          for instance, (ip, names) in self.hosts.items()}}


class DnsService:
    """The DNS servers of every provider network on the node."""

    def __init__(self, state_dir: Path, *, binary: str = "dnsmasq", supervise: bool = True,
                 check_interval: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._state_dir = state_dir
        self._binary = binary
        self._clock = clock
        self._lock = threading.RLock()
        self._networks: Dict[str, _Network] = {}
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None
        if supervise:
            # Started here, so it runs in the caller's network namespace (threads inherit it):
            # restarted servers come back where the first one ran.
            self._thread = threading.Thread(target=self._supervise, args=(check_interval,),
                                            name="sm-dns-supervisor", daemon=True)
            self._thread.start()

    # --- the interface -----------------------------------------------------------------------

    def set_network(self, network_id: str, bridge: str, address: str, upstream: Sequence[str]) -> None:
        """Start the network's server, or reconfigure it (a restart) when something changed."""
        address = _check_ip(address, "bridge address")
        servers = tuple(_check_ip(server, "DNS server") for server in upstream)
        with self._lock:
            network = self._networks.get(network_id)
            if network is None:
                directory = self._state_dir / _directory_name(network_id)
                network = _Network(network_id, directory, bridge, address, servers)
                self._networks[network_id] = network
            elif (network.bridge, network.address, network.upstream) == (bridge, address, servers) \
                    and self._alive(network):
                return
            else:
                self._stop(network)
                network.bridge, network.address, network.upstream = bridge, address, servers
            self._write_all(network)
            network.failures, network.next_start = 0, 0.0
            self._start(network)

    def remove_network(self, network_id: str) -> None:
        """Stop the network's server and remove its state; an unknown network is fine."""
        with self._lock:
            network = self._networks.pop(network_id, None)
            if network is None:
                directory = self._state_dir / _directory_name(network_id)
                if not directory.exists():
                    return
                network = _Network(network_id, directory, "", "", ())
                network.pid = self._read_pid(network)
            self._stop(network)
            shutil.rmtree(network.directory, ignore_errors=True)
        log.info("dns: network %s removed", network_id)

    def add_names(self, network_id: str, instance_id: str, ip: str, names: Sequence[str]) -> None:
        """Serve ``names`` → ``ip`` for the instance (replacing its earlier names). A name another
        instance of the network holds raises :class:`AlreadyExist`, and nothing changes."""
        ip = _check_ip(ip, "instance address")
        wanted = tuple(_check_name(name) for name in names)
        with self._lock:
            network = self._network(network_id)
            taken = {name.lower(): owner for owner, (_, held) in network.hosts.items()
                     if owner != instance_id for name in held}
            for name in wanted:
                owner = taken.get(name.lower())
                if owner is not None:
                    raise AlreadyExist(f"DNS name {name} is taken by instance {owner}")
            network.hosts[instance_id] = (ip, wanted)
            self._write_all(network)
            self._reload(network)

    def remove_names(self, network_id: str, instance_id: str) -> None:
        with self._lock:
            network = self._networks.get(network_id)
            if network is None or network.hosts.pop(instance_id, None) is None:
                return
            self._write_all(network)
            self._reload(network)

    def adopt(self, keep_networks: Set[str]) -> None:
        """At agent start: re-own the running servers of ``keep_networks`` (started again when they
        are gone); stop every other server started from this state directory and remove its
        state."""
        with self._lock:
            kept_pids: Set[int] = set()
            if self._state_dir.is_dir():
                for directory in sorted(self._state_dir.iterdir()):
                    network = self._load(directory)
                    if network is not None and network.network_id in keep_networks:
                        self._networks.setdefault(network.network_id, network)
                        network = self._networks[network.network_id]
                        if self._alive(network):
                            kept_pids.add(network.pid or 0)
                            log.info("dns: adopted the server of network %s (pid %s)",
                                     network.network_id, network.pid)
                        else:
                            self._start(network)
                            kept_pids.add(network.pid or 0)
                        continue
                    stray = network or _Network(directory.name, directory, "", "", ())
                    stray.pid = self._read_pid(stray)
                    self._stop(stray)
                    shutil.rmtree(directory, ignore_errors=True)
                    log.info("dns: removed the server of network %s, no longer here", stray.network_id)
            for pid in self._our_processes():
                if pid not in kept_pids:
                    log.warning("dns: stopping stray dnsmasq %d started from %s", pid, self._state_dir)
                    _terminate(pid, None)

    def check(self) -> None:
        """Restart every server that died (within its backoff)."""
        with self._lock:
            for network in list(self._networks.values()):
                if self._alive(network):
                    continue
                now = self._clock()
                if now < network.next_start:
                    continue
                log.warning("dns: the server of network %s is gone; restarting it", network.network_id)
                try:
                    self._start(network)
                    network.failures = 0
                except RuntimeFailure as err:
                    network.failures += 1
                    delay = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** (network.failures - 1))
                    network.next_start = now + delay
                    log.error("dns: network %s: %s; next try in %g s", network.network_id, err, delay)

    def close(self, stop_servers: bool = False) -> None:
        """Stop supervising; the servers keep running (adopted by the next agent) unless
        ``stop_servers``."""
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5.0)
        if stop_servers:
            with self._lock:
                for network in self._networks.values():
                    self._stop(network)

    def pid(self, network_id: str) -> Optional[int]:
        """The server's pid (for diagnostics and tests)."""
        with self._lock:
            network = self._networks.get(network_id)
            return network.pid if network is not None and self._alive(network) else None

    # --- processes ---------------------------------------------------------------------------

    def _network(self, network_id: str) -> _Network:
        network = self._networks.get(network_id)
        if network is None:
            raise NotFound(f"DNS: network {network_id} is not set up")
        return network

    def _supervise(self, interval: float) -> None:
        while not self._stopping.wait(interval):
            try:
                self.check()
            except Exception:  # the supervisor must outlive one bad round
                log.exception("dns: supervision round failed")

    def _start(self, network: _Network) -> None:
        network.directory.mkdir(parents=True, exist_ok=True)
        if not network.conf.exists():
            self._write_all(network)
        log_path = network.directory / "dnsmasq.log"
        try:
            with open(log_path, "wb") as log_file:
                child = subprocess.Popen(
                    [self._binary, "--keep-in-foreground", f"--conf-file={network.conf}"],
                    stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                    start_new_session=True, close_fds=True)
        except OSError as err:
            raise RuntimeFailure.from_os_error(err, "DNS server dnsmasq") from err
        if not _wait_ready(child):
            child.wait()
            raise RuntimeFailure(f"DNS server for {network.network_id} exited: {_tail(log_path)}")
        network.child, network.pid = child, child.pid
        write_atomic(network.directory / "dnsmasq.pid", f"{child.pid}\n".encode(), 0o644)
        log.info("dns: network %s served on %s by dnsmasq %d", network.network_id, network.address, child.pid)

    def _alive(self, network: _Network) -> bool:
        if network.child is not None:
            return network.child.poll() is None
        return network.pid is not None and _is_ours(network.pid, network.conf)

    def _stop(self, network: _Network) -> None:
        if network.pid is not None and (network.child is not None or _is_ours(network.pid, network.conf)):
            _terminate(network.pid, network.child)
        network.child, network.pid = None, None

    def _reload(self, network: _Network) -> None:
        # SIGHUP re-reads the hosts file and clears the cache (dnsmasq(8), NOTES). A server that
        # is not running reads the file when the supervisor starts it again.
        if network.pid is None or not self._alive(network):
            return
        log_path = network.directory / "dnsmasq.log"
        try:
            before = log_path.stat().st_size
        except OSError:
            before = None
        try:
            os.kill(network.pid, signal.SIGHUP)
        except ProcessLookupError:
            return
        if before is not None:
            # The reload is asynchronous; its log line ("read <hosts> - N names") tells when the
            # new names are served, so an instance started right after resolves them.
            _wait_for_log(log_path, before, f"read {network.directory / 'hosts'}")

    def _our_processes(self) -> List[int]:
        """Pids of dnsmasq processes whose config lies under our state directory."""
        marker = f"--conf-file={self._state_dir}/".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if any(arg.startswith(marker) for arg in cmdline.split(b"\0")):
                pids.append(int(entry.name))
        return pids

    # --- files -------------------------------------------------------------------------------

    def _write_all(self, network: _Network) -> None:
        network.directory.mkdir(parents=True, exist_ok=True)
        hosts = network.directory / "hosts"
        lines = [f"{ip} {' '.join(names)}\n" for ip, names in network.hosts.values() if names]
        write_atomic(hosts, "".join(lines).encode(), 0o644)
        write_atomic(network.directory / "network.json",
                     json.dumps(network.to_json(), sort_keys=True).encode(), 0o600)
        write_atomic(network.conf, self._config(network, hosts).encode(), 0o644)

    def _config(self, network: _Network, hosts: Path) -> str:
        lines = [
            "# written by aos-sm; replaced on every change",
            "bind-dynamic",
            f"listen-address={network.address}",
            "no-resolv",
            "no-hosts",
            f"addn-hosts={hosts}",
            "pid-file=",
            "log-facility=-",
            "cache-size=1000",
        ]
        if not _readable_by_others(hosts):
            # dnsmasq drops to an unprivileged user before it re-reads the hosts file on SIGHUP;
            # a state directory only root can enter would hide the file from it.
            lines.append("user=root")
        lines += [f"server={server}" for server in network.upstream]
        return "\n".join(lines) + "\n"

    def _load(self, directory: Path) -> Optional[_Network]:
        try:
            data = json.loads((directory / "network.json").read_bytes())
            network = _Network(str(data["networkId"]), directory, str(data["bridge"]),
                               _check_ip(str(data["address"]), "bridge address"),
                               tuple(_check_ip(str(s), "DNS server") for s in data["upstream"]))
            for instance, entry in data.get("hosts", {}).items():
                network.hosts[str(instance)] = (_check_ip(str(entry["ip"]), "instance address"),
                                                tuple(_check_name(str(n)) for n in entry["names"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError, InvalidArgument) as err:
            log.warning("dns: state %s unreadable (%s)", directory, err)
            return None
        network.pid = self._read_pid(network)
        return network

    @staticmethod
    def _read_pid(network: _Network) -> Optional[int]:
        try:
            return int((network.directory / "dnsmasq.pid").read_text().strip())
        except (OSError, ValueError):
            return None


def _readable_by_others(path: Path) -> bool:
    """Whether a user other than root can reach ``path`` (every ancestor searchable)."""
    for directory in [path.parent, *path.parent.parents]:
        try:
            mode = directory.stat().st_mode
        except OSError:
            return False
        if not mode & stat.S_IXOTH:
            return False
    return True


def _is_ours(pid: int, conf: Path) -> bool:
    """``pid`` is a live (not zombie) dnsmasq started with ``conf``: guards against pid reuse."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and f"--conf-file={conf}".encode() in cmdline


def _wait_ready(child: "subprocess.Popen[bytes]", timeout: float = 2.0) -> bool:
    """Wait until dnsmasq handles SIGHUP (a SIGHUP before that would kill it); False when it
    exited first (a bad configuration)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            return False
        try:
            for line in Path(f"/proc/{child.pid}/status").read_text().splitlines():
                if line.startswith("SigCgt:") and int(line.split()[1], 16) & (1 << (signal.SIGHUP - 1)):
                    return True
        except (OSError, ValueError):
            pass
        time.sleep(0.005)
    return child.poll() is None


def _wait_for_log(path: Path, offset: int, text: str, timeout: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(path, "rb") as handle:
                handle.seek(offset)
                if text.encode() in handle.read():
                    return True
        except OSError:
            return False
        if time.monotonic() > deadline:
            log.warning("dns: no sign of %s reloading its hosts file within %g s", path.parent.name, timeout)
            return False
        time.sleep(0.005)


def _terminate(pid: int, child: Optional["subprocess.Popen[bytes]"]) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + _STOP_WAIT
    while time.monotonic() < deadline:
        if child is not None:
            if child.poll() is not None:
                return
        elif not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.01)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    if child is not None:
        child.wait()


def _tail(path: Path, limit: int = 200) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError as err:
        return f"(no log: {err.strerror})"
    last = text.splitlines()[-1] if text else "no output"
    return last[-limit:]


"""Test worlds for the network manager: a "node" namespace with an uplink veth to an "outside"
namespace (203.0.113.0/24, TEST-NET-3), so nothing ever touches this machine's own interfaces,
routes, forwarding or firewall. The agent (or an adapter under test) runs inside ``node``: as a
subprocess through ``Namespace.popen``, or in-process on a thread that entered it (``call``;
network namespaces are per thread)."""

from __future__ import annotations

import ctypes
import itertools
import os
import socket
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, TypeVar

T = TypeVar("T")
NETNS_DIR = Path("/run/netns")
OUTSIDE_IP = "203.0.113.1"
NODE_UPLINK_IP = "203.0.113.2"
_counter = itertools.count()
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def setns(path: Path) -> None:
    """Move the calling thread into the network namespace at ``path`` (os.setns is 3.12+)."""
    with open(path) as handle:
        if _libc.setns(handle.fileno(), _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")


def unique(prefix: str) -> str:
    """A name no concurrent test run uses (pid + counter), short enough for a 15-byte ifname."""
    return f"{prefix}{os.getpid() % 100000:x}{next(_counter):x}"


def netns_problem() -> Optional[str]:
    """Why namespace tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "network namespace tests need root"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is missing"
    name = unique("probe")
    done = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return f"cannot create a network namespace: {done.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", name], check=False)
    return None


@dataclass
class Namespace:
    name: str

    @property
    def path(self) -> Path:
        return NETNS_DIR / self.name

    def run(self, *args: str, check: bool = True, timeout: float = 30.0,
            input: Optional[str] = None) -> subprocess.CompletedProcess[str]:
        """A command inside the namespace."""
        return subprocess.run(["ip", "netns", "exec", self.name, *args], capture_output=True,
                              text=True, check=check, timeout=timeout, input=input)

    def popen(self, args: Sequence[str], **kwargs: Any) -> "subprocess.Popen[bytes]":
        return subprocess.Popen(["ip", "netns", "exec", self.name, *args], **kwargs)

    def call(self, function: Callable[[], T]) -> T:
        """``function()`` on a thread that entered the namespace (netlink and nftables sockets it
        opens live there); exceptions propagate."""
        result: List[Any] = []
        errors: List[BaseException] = []

        def body() -> None:
            try:
                setns(self.path)
                result.append(function())
            except BaseException as err:  # re-raised in the caller
                errors.append(err)

        thread = threading.Thread(target=body, name=f"in-{self.name}")
        thread.start()
        thread.join()
        if errors:
            raise errors[0]
        return result[0]  # type: ignore[no-any-return]


    def listen(self, port: int, host: str = "0.0.0.0") -> socket.socket:
        """A TCP listening socket bound inside the namespace (the caller accepts and closes)."""
        def bind() -> socket.socket:
            server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind((host, port))
            server.listen(16)
            return server
        return self.call(bind)

    def can_connect(self, host: str, port: int, timeout: float = 2.0) -> bool:
        """Whether a TCP connection from inside the namespace to host:port is accepted."""
        def attempt() -> bool:
            try:
                with socket.create_connection((host, port), timeout=timeout):
                    return True
            except OSError:
                return False
        return self.call(attempt)


@dataclass
class World:
    """``node`` (where the agent runs) wired to ``outside`` by one veth: node's ``uplink`` has
    203.0.113.2/24 and a default route via outside's 203.0.113.1."""

    node: Namespace
    outside: Namespace
    uplink: str
    created: List[str] = field(default_factory=list)

    def close(self) -> None:
        for name in self.created:
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)


def make_world(prefix: str = "t") -> World:
    node, outside = Namespace(unique(prefix + "n")), Namespace(unique(prefix + "o"))
    world = World(node, outside, "uplink0")
    try:
        for ns in (node, outside):
            subprocess.run(["ip", "netns", "add", ns.name], check=True, capture_output=True)
            world.created.append(ns.name)
            ns.run("ip", "link", "set", "lo", "up")
        host_end = unique("tu")
        subprocess.run(["ip", "link", "add", host_end, "netns", node.name, "type", "veth", "peer",
                        "name", "out0", "netns", outside.name], check=True, capture_output=True)
        node.run("ip", "link", "set", host_end, "name", world.uplink)
        node.run("ip", "addr", "add", f"{NODE_UPLINK_IP}/24", "dev", world.uplink)
        node.run("ip", "link", "set", world.uplink, "up")
        node.run("ip", "route", "add", "default", "via", OUTSIDE_IP)
        outside.run("ip", "addr", "add", f"{OUTSIDE_IP}/24", "dev", "out0")
        outside.run("ip", "link", "set", "out0", "up")
    except BaseException:
        world.close()
        raise
    return world

"""A provider network built by hand inside a test world, for the traffic, shaping and DNS tests
(the network manager's own adapter builds the real thing): a bridge with the gateway address in
``world.node``, forwarding and masquerade towards the uplink, and "instances": namespaces with an
``eth0`` veth whose host end is on the bridge. Every namespace goes into ``world.created``, so the
world's teardown removes it; everything else lives inside those namespaces."""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass
from typing import Optional, Tuple

from netns import Namespace, World, unique

GATEWAY = "172.17.0.1"
PREFIX = 16


@dataclass
class Lan:
    world: World
    bridge: str
    gateway: str = GATEWAY


@dataclass
class Instance:
    namespace: Namespace
    host_veth: str
    ip: str


def make_lan(world: World, gateway: str = GATEWAY) -> Lan:
    node = world.node
    bridge = unique("br")
    node.run("ip", "link", "add", bridge, "type", "bridge")
    node.run("ip", "addr", "add", f"{gateway}/{PREFIX}", "dev", bridge)
    node.run("ip", "link", "set", bridge, "up")
    node.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
    # The test's own NAT table (the firewall's job in the agent): instances reach the outside.
    node.run("nft", f"add table ip testnat; add chain ip testnat post {{ type nat hook postrouting priority 100; }}; "
                    f"add rule ip testnat post oifname {world.uplink} masquerade")
    return Lan(world, bridge, gateway)


def add_instance(lan: Lan, ip: str) -> Instance:
    namespace = Namespace(unique("ti"))
    node = lan.world.node
    # Not through `ip netns exec`: its private mount namespace would hide the new bind mount.
    subprocess.run(["ip", "netns", "add", namespace.name], check=True, capture_output=True)
    lan.world.created.append(namespace.name)
    host_veth = unique("ve")
    node.run("ip", "link", "add", host_veth, "type", "veth", "peer", "name", "eth0", "netns", namespace.name)
    node.run("ip", "link", "set", host_veth, "master", lan.bridge)
    node.run("ip", "link", "set", host_veth, "up")
    namespace.run("ip", "link", "set", "lo", "up")
    namespace.run("ip", "addr", "add", f"{ip}/{PREFIX}", "dev", "eth0")
    namespace.run("ip", "link", "set", "eth0", "up")
    namespace.run("ip", "route", "add", "default", "via", lan.gateway)
    return Instance(namespace, host_veth, ip)


def send_udp(namespace: Namespace, host: str, port: int, datagrams: int, size: int) -> None:
    """``datagrams`` UDP datagrams of ``size`` payload bytes from inside ``namespace`` (each is
    ``size + 28`` bytes at the IP layer: no segmentation offload makes the count vary)."""
    def send() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            payload = b"x" * size
            for _ in range(datagrams):
                sock.sendto(payload, (host, port))
    namespace.call(send)


def tcp_transfer(source: Namespace, sink: Namespace, host: str, port: int, size: int,
                 timeout: float = 30.0, sink_reads: bool = True) -> Tuple[int, float]:
    """Send ``size`` bytes over TCP from ``source`` to a listener in ``sink`` at host:port; returns
    the bytes the sink received and the seconds the transfer took (from connect to the sink's
    end of stream, or to ``timeout`` when the sender stalls)."""
    import threading

    server = sink.listen(port)
    server.settimeout(timeout)
    received = [0]

    def drain() -> None:
        try:
            connection, _ = server.accept()
        except OSError:
            return
        connection.settimeout(timeout)
        with connection:
            try:
                while True:
                    chunk = connection.recv(65536)
                    if not chunk:
                        return
                    received[0] += len(chunk)
            except OSError:
                return

    reader = threading.Thread(target=drain)
    reader.start()
    started = time.monotonic()

    def send() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout) as sock:
                chunk = b"y" * 65536
                left = size
                while left > 0:
                    left -= sock.send(chunk[:min(left, len(chunk))])
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            return  # cut (a quota) or timed out: the sink's count says how far it got

    try:
        source.call(send)
        reader.join(timeout + 5)
    finally:
        server.close()
    return received[0], time.monotonic() - started


def outside_udp_sink(world: World, port: int) -> Optional[socket.socket]:
    """A bound UDP socket in the outside namespace (so datagrams do not come back as ICMP)."""
    def bind() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.bind(("0.0.0.0", port))
        return sock
    return world.outside.call(bind)


def tcp_download(client: Namespace, server_side: Namespace, host: str, port: int, size: int,
                 timeout: float = 30.0) -> Tuple[int, float]:
    """``client`` connects to a listener in ``server_side`` that sends ``size`` bytes; returns the
    bytes the client read and the seconds from connect to end of stream."""
    import threading

    server = server_side.listen(port)
    server.settimeout(timeout)

    def serve() -> None:
        try:
            connection, _ = server.accept()
        except OSError:
            return
        with connection:
            try:
                connection.sendall(b"z" * size)
            except OSError:
                return

    writer = threading.Thread(target=serve)
    writer.start()

    def receive() -> Tuple[int, float]:
        received = 0
        started = time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=timeout) as sock:
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    received += len(chunk)
        except OSError:
            pass
        return received, time.monotonic() - started

    try:
        return client.call(receive)
    finally:
        writer.join(timeout + 5)
        server.close()

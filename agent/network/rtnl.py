"""A small rtnetlink client on the standard library's AF_NETLINK socket: links, addresses, routes.

Why not pyroute2: importing any part of it runs its package ``__init__``, which pulls asyncio,
multiprocessing and sqlite3 (+12 MiB RSS and ~85 ms on the development machine, 0.9.7), more
than the whole network manager is allowed to cost on a small board. The handful of messages the
manager sends (rtnetlink(7), <linux/if_link.h>, <linux/rtnetlink.h>) fit in this module.

A socket talks to the network namespace it was opened in (netlink sockets are bound to it at
creation): :func:`open_in` opens one inside an instance's namespace without forking, by moving
the calling thread in and back out (setns(2) acts on one thread).
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..errors import RuntimeFailure

NETLINK_ROUTE = 0
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE = 24
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE, NLM_F_DUMP = 0x1, 0x4, 0x200, 0x400, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLA_F_NESTED = 0x8000
IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER, IFLA_PROTINFO, IFLA_LINKINFO = 3, 4, 5, 10, 12, 18
IFLA_NET_NS_FD = 28
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
IFLA_VLAN_ID = 1
IFLA_BRPORT_MODE = 4  # hairpin
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_GATEWAY, RTA_OIF = 5, 4
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 3, 0, 1
IFF_UP = 0x1
CLONE_NEWNET = 0x40000000
_IFINFO = struct.Struct("=BxHiII")
_IFADDR = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_HEADER = struct.Struct("=IHHII")
_ATTR = struct.Struct("=HH")

_libc = ctypes.CDLL(None, use_errno=True)


class NetlinkError(RuntimeFailure):
    """The kernel refused a request; ``errno`` says why (EEXIST, ENODEV, EOPNOTSUPP …)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message, exit_code=code)
        self.errno = code


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def attr(kind: int, value: bytes) -> bytes:
    return _pad(_ATTR.pack(_ATTR.size + len(value), kind) + value)


def attr_str(kind: int, value: str) -> bytes:
    return attr(kind, value.encode() + b"\0")


def attr_u32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=I", value))


def nested(kind: int, *parts: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(parts))


def parse_attrs(data: bytes) -> Dict[int, bytes]:
    found: Dict[int, bytes] = {}
    offset = 0
    while offset + _ATTR.size <= len(data):
        length, kind = _ATTR.unpack_from(data, offset)
        if length < _ATTR.size:
            break
        found[kind & ~NLA_F_NESTED] = data[offset + _ATTR.size:offset + length]
        offset += (length + 3) & ~3
    return found


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    up: bool
    master: int
    kind: str


def setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise RuntimeFailure(f"setns: {os.strerror(code)}", exit_code=code)


def thread_netns() -> int:
    """An fd of the calling thread's own network namespace (network namespaces are per thread)."""
    return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


class Rtnl:
    """One rtnetlink socket; requests are serialised (one in flight, acked before the next)."""

    def __init__(self, sock: Optional[socket.socket] = None) -> None:
        self._sock = sock or socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        self._sock.bind((0, 0))
        self._seq = 0
        self._lock = threading.Lock()

    @classmethod
    def open_in(cls, namespace: Path) -> Rtnl:
        """A socket inside the namespace at ``namespace``: this thread steps in and back out."""
        home = thread_netns()
        try:
            with open(namespace, "rb") as target:
                setns(target.fileno())
            try:
                sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
            finally:
                setns(home)
        finally:
            os.close(home)
        return cls(sock)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- the exchange

    def request(self, kind: int, flags: int, body: bytes, what: str) -> List[Tuple[int, bytes]]:
        """Send one request and read until its ack (or DONE for a dump); the replies' (type, body)."""
        with self._lock:
            self._seq += 1
            seq = self._seq
            message = _HEADER.pack(_HEADER.size + len(body), kind, flags | NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body
            self._sock.send(message)
            replies: List[Tuple[int, bytes]] = []
            while True:
                data = self._sock.recv(1 << 16)
                offset = 0
                while offset + _HEADER.size <= len(data):
                    length, mtype, _flags, mseq, _pid = _HEADER.unpack_from(data, offset)
                    payload = data[offset + _HEADER.size:offset + length]
                    offset += (length + 3) & ~3
                    if mseq != seq:
                        continue
                    if mtype == NLMSG_DONE:
                        return replies
                    if mtype == NLMSG_ERROR:
                        code = -struct.unpack_from("=i", payload)[0]
                        if code == 0:
                            if flags & NLM_F_DUMP == NLM_F_DUMP:
                                continue
                            return replies
                        raise NetlinkError(f"{what}: {os.strerror(code)}", code)
                    replies.append((mtype, payload))

    # --- links

    def links(self) -> List[Link]:
        found = []
        for _kind, payload in self.request(RTM_GETLINK, NLM_F_DUMP, _IFINFO.pack(0, 0, 0, 0, 0), "list links"):
            _family, _type, index, flags, _change = _IFINFO.unpack_from(payload)
            attrs = parse_attrs(payload[_IFINFO.size:])
            info = parse_attrs(attrs.get(IFLA_LINKINFO, b""))
            master = struct.unpack("=I", attrs[IFLA_MASTER])[0] if IFLA_MASTER in attrs else 0
            found.append(Link(index, attrs.get(IFLA_IFNAME, b"").rstrip(b"\0").decode(), bool(flags & IFF_UP),
                              master, info.get(IFLA_INFO_KIND, b"").rstrip(b"\0").decode()))
        return found

    def index(self, name: str) -> int:
        try:
            replies = self.request(RTM_GETLINK, 0, _IFINFO.pack(0, 0, 0, 0, 0) + attr_str(IFLA_IFNAME, name),
                                   f"link {name}")
        except NetlinkError as err:
            if err.errno == errno.ENODEV:
                raise NetlinkError(f"no link {name}", errno.ENODEV) from err
            raise
        return int(_IFINFO.unpack_from(replies[0][1])[2])

    def exists(self, name: str) -> bool:
        try:
            self.index(name)
            return True
        except NetlinkError as err:
            if err.errno == errno.ENODEV:
                return False
            raise

    def add_link(self, name: str, kind: str, data: bytes = b"", extra: bytes = b"") -> None:
        info = nested(IFLA_LINKINFO, attr_str(IFLA_INFO_KIND, kind), *( [nested(IFLA_INFO_DATA, data)] if data else []))
        self.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL,
                     _IFINFO.pack(0, 0, 0, 0, 0) + attr_str(IFLA_IFNAME, name) + extra + info, f"add {kind} {name}")

    def add_bridge(self, name: str) -> None:
        self.add_link(name, "bridge")

    def add_vlan(self, name: str, parent: str, vlan_id: int) -> None:
        self.add_link(name, "vlan", attr(IFLA_VLAN_ID, struct.pack("=H", vlan_id)),
                      attr_u32(IFLA_LINK, self.index(parent)))

    def add_veth(self, name: str, peer: str, peer_namespace_fd: int) -> None:
        """``name`` here; its peer made directly in the namespace ``peer_namespace_fd`` names."""
        peer_info = _IFINFO.pack(0, 0, 0, 0, 0) + attr_str(IFLA_IFNAME, peer) + attr_u32(IFLA_NET_NS_FD, peer_namespace_fd)
        self.add_link(name, "veth", attr(VETH_INFO_PEER, peer_info))

    def delete_link(self, name: str) -> bool:
        """False when there was no such link (a delete tolerates absence: undo and cleanup)."""
        try:
            index = self.index(name)
            self.request(RTM_DELLINK, 0, _IFINFO.pack(0, 0, index, 0, 0), f"delete link {name}")
            return True
        except NetlinkError as err:
            if err.errno == errno.ENODEV:
                return False
            raise

    def set_link(self, name: str, *, up: Optional[bool] = None, master: Optional[str] = None) -> None:
        index = self.index(name)
        flags, change = (0, 0) if up is None else (IFF_UP if up else 0, IFF_UP)
        extra = attr_u32(IFLA_MASTER, self.index(master)) if master is not None else b""
        self.request(RTM_NEWLINK, 0, _IFINFO.pack(0, 0, index, flags, change) + extra, f"set link {name}")

    def set_hairpin(self, name: str) -> None:
        # `bridge link set dev X hairpin on`: an AF_BRIDGE setlink with IFLA_BRPORT_MODE.
        index = self.index(name)
        self.request(RTM_SETLINK, 0, _IFINFO.pack(socket.AF_BRIDGE, 0, index, 0, 0)
                     + nested(IFLA_PROTINFO, attr(IFLA_BRPORT_MODE, b"\x01")), f"hairpin on {name}")

    # --- addresses and routes

    def addresses(self, name: str) -> List[Tuple[str, int]]:
        index = self.index(name)
        found = []
        for _kind, payload in self.request(RTM_GETADDR, NLM_F_DUMP, _IFADDR.pack(socket.AF_INET, 0, 0, 0, 0),
                                           "list addresses"):
            family, prefix, _flags, _scope, owner = _IFADDR.unpack_from(payload)
            attrs = parse_attrs(payload[_IFADDR.size:])
            if owner == index and family == socket.AF_INET and IFA_LOCAL in attrs:
                found.append((socket.inet_ntoa(attrs[IFA_LOCAL]), prefix))
        return found

    def _address(self, kind: int, flags: int, name: str, ip: str, prefix: int, what: str) -> None:
        packed = socket.inet_aton(ip)
        self.request(kind, flags, _IFADDR.pack(socket.AF_INET, prefix, 0, 0, self.index(name))
                     + attr(IFA_LOCAL, packed) + attr(IFA_ADDRESS, packed), what)

    def add_address(self, name: str, ip: str, prefix: int) -> None:
        try:
            self._address(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, name, ip, prefix, f"add {ip}/{prefix} to {name}")
        except NetlinkError as err:
            if err.errno != errno.EEXIST:
                raise

    def delete_address(self, name: str, ip: str, prefix: int) -> None:
        try:
            self._address(RTM_DELADDR, 0, name, ip, prefix, f"delete {ip}/{prefix} from {name}")
        except NetlinkError as err:
            if err.errno not in (errno.EADDRNOTAVAIL, errno.ENODEV):
                raise

    def add_default_route(self, gateway: str, device: str) -> None:
        body = _RTMSG.pack(socket.AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)
        body += attr(RTA_GATEWAY, socket.inet_aton(gateway)) + attr_u32(RTA_OIF, self.index(device))
        self.request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body, f"default route via {gateway}")

    def default_route_device(self) -> Optional[str]:
        """The interface of the IPv4 default route (the uplink a VLAN goes on), if any."""
        body = _RTMSG.pack(socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)
        names = {link.index: link.name for link in self.links()}
        for _kind, payload in self.request(26, NLM_F_DUMP, body, "list routes"):  # RTM_GETROUTE
            family, dst_len, _src, _tos, table, _proto, _scope, _type, _flags = _RTMSG.unpack_from(payload)
            attrs = parse_attrs(payload[_RTMSG.size:])
            if family == socket.AF_INET and dst_len == 0 and table == RT_TABLE_MAIN and RTA_OIF in attrs:
                return names.get(struct.unpack("=I", attrs[RTA_OIF])[0])
        return None


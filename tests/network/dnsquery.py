"""A minimal DNS client for tests: one A query over UDP (RFC 1035 §4), the answer's IPv4
addresses. No resolver library, no /etc/resolv.conf: the server is named explicitly."""

from __future__ import annotations

import random
import socket
import struct
import time
from typing import List, Optional

from netns import Namespace


def _encode_name(name: str) -> bytes:
    return b"".join(bytes([len(label)]) + label.encode() for label in name.rstrip(".").split(".")) + b"\0"


def _skip_name(message: bytes, offset: int) -> int:
    while True:
        length = message[offset]
        if length & 0xC0 == 0xC0:  # a compression pointer ends the name
            return offset + 2
        if length == 0:
            return offset + 1
        offset += 1 + length


def query_a(server: str, name: str, timeout: float = 1.0) -> Optional[List[str]]:
    """The A records of ``name`` from ``server``: a list (empty for NXDOMAIN / no data), or None
    when no answer came."""
    ident = random.randrange(1 << 16)
    request = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + _encode_name(name) + struct.pack("!HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(request, (server, 53))
            reply, _ = sock.recvfrom(4096)
        except OSError:
            return None
    answer_id, _flags, questions, answers = struct.unpack("!HHHH", reply[:8])
    if answer_id != ident:
        return None
    offset = 12
    for _ in range(questions):
        offset = _skip_name(reply, offset) + 4
    addresses = []
    for _ in range(answers):
        offset = _skip_name(reply, offset)
        rtype, _rclass, _ttl, length = struct.unpack("!HHIH", reply[offset:offset + 10])
        offset += 10
        if rtype == 1 and length == 4:
            addresses.append(socket.inet_ntoa(reply[offset:offset + 4]))
        offset += length
    return addresses


def resolve_in(namespace: Namespace, server: str, name: str, wait: float = 5.0) -> Optional[List[str]]:
    """``query_a`` from inside ``namespace``, retried until a server answers or ``wait`` passes."""
    deadline = time.monotonic() + wait
    while True:
        answer = namespace.call(lambda: query_a(server, name))
        if answer is not None or time.monotonic() > deadline:
            return answer
        time.sleep(0.05)

"""Events the session core consumes. Adapters create them; the core never does I/O to learn them.

Every event that comes from one connection attempt carries that attempt's ``session`` number, so
an event that arrives late from an attempt the core has already abandoned (a reader thread
reporting the end of a stream we closed ourselves) is recognised as stale and ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union


@dataclass(frozen=True)
class Start:
    """The agent wants a session with CM."""


@dataclass(frozen=True)
class Stop:
    """The agent is shutting down; valid in every state."""


@dataclass(frozen=True)
class ChannelReady:
    """The channel to CM is up and, for TLS modes, CM's certificate verified."""

    session: int


@dataclass(frozen=True)
class ConnectFailed:
    """The channel could not be made ready (refused, timed out, CM not trusted).

    ``code`` names the gRPC status the failure amounts to (statemachine/status.py)."""

    session: int
    reason: str
    code: str = "UNAVAILABLE"


@dataclass(frozen=True)
class Registered:
    """SMInfo and then NodeInstancesStatus were handed to the stream."""

    session: int


@dataclass(frozen=True)
class MessageReceived:
    """CM sent a message on the stream; the core treats it as opaque."""

    session: int
    message: object


@dataclass(frozen=True)
class Processed:
    """The dispatcher finished the synchronous part of handling one message."""

    session: int


@dataclass(frozen=True)
class StreamBroken:
    """The stream ended: network, CM restart, keepalive timeout; ``code`` is its gRPC status name."""

    session: int
    reason: str
    code: str = "UNKNOWN"


@dataclass(frozen=True)
class CertificatesChanged:
    """Certificate files changed on disk: reconnect with the new ones."""


@dataclass(frozen=True)
class RetryTimerFired:
    """The backoff timer with this token elapsed."""

    token: int


Event = Union[
    Start,
    Stop,
    ChannelReady,
    ConnectFailed,
    Registered,
    MessageReceived,
    Processed,
    StreamBroken,
    CertificatesChanged,
    RetryTimerFired,
]

"""Effects the session core asks its adapter to carry out. Frozen data; the adapter owns all I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from .status import Recovery


@dataclass(frozen=True)
class OpenChannel:
    """Build fresh credentials and a channel, then report ChannelReady or ConnectFailed."""

    session: int


@dataclass(frozen=True)
class OpenStream:
    """Open RegisterSM, write SMInfo then NodeInstancesStatus, start reading; report Registered."""

    session: int


@dataclass(frozen=True)
class SessionLive:
    """The session is synced: send what waited during the outage, then send directly."""

    session: int


@dataclass(frozen=True)
class Dispatch:
    """Route one CM message to its subsystem; report Processed when the handler returns."""

    session: int
    message: object


@dataclass(frozen=True)
class CloseSession:
    """Cancel the stream and close the channel of this session. ``recovery`` is set when a
    failure closed it: the adapter logs it as the policy says (statemachine/status.py)."""

    session: int
    reason: str
    recovery: Optional[Recovery] = None


@dataclass(frozen=True)
class StartTimer:
    """Report RetryTimerFired(token) after ``delay`` seconds."""

    token: int
    delay: float


@dataclass(frozen=True)
class CancelTimer:
    token: int


@dataclass(frozen=True)
class Stopped:
    """The core reached Disconnected on Stop; the agent may exit."""


@dataclass(frozen=True)
class Ignored:
    """An event that no longer applies (stale session or timer); the adapter logs it."""

    event: object
    why: str


Effect = Union[
    OpenChannel,
    OpenStream,
    SessionLive,
    Dispatch,
    CloseSession,
    StartTimer,
    CancelTimer,
    Stopped,
    Ignored,
]

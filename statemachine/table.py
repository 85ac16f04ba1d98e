"""The session's states and every edge between them: the one table the code runs and draws.

Theory of operation
-------------------
The SM keeps one RegisterSM stream to CM. A session starts Disconnected. ``Start`` opens a
channel (Connecting); once the channel is ready (and, with TLS, CM verified) the stream is opened
and SMInfo then NodeInstancesStatus are written (Registering). After that the session is Synced:
each CM message moves it to Processing while its handler runs, and back. Any failure (the channel
cannot be made ready, the stream breaks, certificates change on disk) goes to Backoff, whose
timer leads back to Connecting. ``Stop`` ends in Disconnected from every state.

Each edge names the core method that produces its effects (see core.py). Anything not in this
table is an explicit error (``InvalidTransition``), never a silent drop.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import FrozenSet, Tuple, Type

from .events import (
    CertificatesChanged,
    ChannelReady,
    ConnectFailed,
    Event,
    MessageReceived,
    Processed,
    Registered,
    RetryTimerFired,
    Start,
    Stop,
    StreamBroken,
)


class State(Enum):
    Disconnected = "Disconnected"
    Connecting = "Connecting"
    Registering = "Registering"
    Synced = "Synced"
    Processing = "Processing"
    Backoff = "Backoff"


@dataclass(frozen=True)
class Edge:
    """``event`` (an event class) moves ``sources`` to ``dest``; ``action`` makes the effects."""

    event: Type[Event]
    sources: Tuple[State, ...]
    dest: State
    action: str


S = State
_SESSION_STATES = (S.Connecting, S.Registering, S.Synced, S.Processing)

EDGES: Tuple[Edge, ...] = (
    # DISCONNECTED -> CONNECTING: the agent starts.
    Edge(Start, (S.Disconnected,), S.Connecting, "open_channel"),
    # CONNECTING -> REGISTERING: channel ready, CM verified; now write SMInfo first.
    Edge(ChannelReady, (S.Connecting,), S.Registering, "open_stream"),
    # CONNECTING -> BACKOFF: refused, timed out, or CM not trusted (SMInfo never sent).
    Edge(ConnectFailed, (S.Connecting,), S.Backoff, "retry_later"),
    # REGISTERING -> SYNCED: SMInfo and NodeInstancesStatus are out; backoff starts over.
    Edge(Registered, (S.Registering,), S.Synced, "go_live"),
    # SYNCED -> PROCESSING: a CM command is being handled.
    Edge(MessageReceived, (S.Synced,), S.Processing, "dispatch"),
    # PROCESSING -> SYNCED: its handler returned (long work continues in the subsystem).
    Edge(Processed, (S.Processing,), S.Synced, "nothing"),
    # REGISTERING/SYNCED/PROCESSING -> BACKOFF: the stream broke.
    Edge(StreamBroken, (S.Registering, S.Synced, S.Processing), S.Backoff, "retry_later"),
    # any session state, or BACKOFF itself -> BACKOFF: new certificates; reconnect at once.
    Edge(CertificatesChanged, _SESSION_STATES + (S.Backoff,), S.Backoff, "retry_now"),
    # BACKOFF -> CONNECTING: the backoff timer elapsed.
    Edge(RetryTimerFired, (S.Backoff,), S.Connecting, "open_channel"),
    # any -> DISCONNECTED: the agent stops.
    Edge(Stop, tuple(State), S.Disconnected, "shut_down"),
)

# Events that a state does not take but that may legitimately race with it: they are answered
# with an ``Ignored`` effect instead of an error. A certificate change while Disconnected
# needs no reconnect; a Start while a session already runs is a no-op.
TOLERATED: FrozenSet[Tuple[Type[Event], State]] = frozenset({
    (CertificatesChanged, S.Disconnected),
    *((Start, state) for state in State if state is not S.Disconnected),
})

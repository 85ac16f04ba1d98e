"""The pure session core: ``handle(event) -> effects``. No I/O, no clock, no threads.

The ``transitions`` machine is built from ``table.EDGES`` and nothing else, so the diagram
(``diagram.py``) and the running code cannot disagree. Each edge's action only appends effects;
the adapter in ``agent/`` carries them out and feeds the results back in as events.

Stale events: every connection attempt gets a new session number, and the number is forgotten
the moment the core closes that session. An event from a forgotten session (a reader thread
reporting the end of a stream we cancelled ourselves) or from a cancelled timer becomes an
``Ignored`` effect, because such races are normal in the I/O layer and carry no information.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterator, List, Optional, Set, Tuple, Type

from transitions import EventData, Machine

from .backoff import backoff_delays
from .effects import (
    CancelTimer,
    CloseSession,
    Dispatch,
    Effect,
    Ignored,
    OpenChannel,
    OpenStream,
    SessionLive,
    StartTimer,
    Stopped,
)
from .events import (
    ChannelReady,
    ConnectFailed,
    Event,
    MessageReceived,
    Processed,
    Registered,
    RetryTimerFired,
    StreamBroken,
)
from .status import Pace, Recovery, recovery_for
from .table import EDGES, TOLERATED, State


class SessionError(Exception):
    """Base of the core's own errors."""


class InvalidTransition(SessionError):
    """Our fault: an event arrived in a state whose table row does not take it."""

    def __init__(self, state: State, event: object) -> None:
        super().__init__(f"{type(event).__name__} is not valid in state {state.name}")
        self.state = state
        self.event = event


_SessionEvent = (ChannelReady, ConnectFailed, Registered, MessageReceived, Processed, StreamBroken)


class _Model:
    """The object ``transitions`` drives; kept apart so the core's own API stays typed."""

    state: State
    trigger: Callable[..., bool]


class SessionCore:
    def __init__(
        self,
        *,
        reconnect_timeout: float,
        reconnect_max_timeout: float,
        random: Callable[[], float],
    ) -> None:
        self._new_delays: Callable[[], Iterator[float]] = lambda: backoff_delays(
            reconnect_timeout, reconnect_max_timeout, random
        )
        self._delays = self._new_delays()
        self._cap = reconnect_max_timeout
        self._random = random
        # The policy verdict on the last failure, until a session is synced again (STATUS=).
        self.last_failure: Optional[Recovery] = None
        self._last_session = 0
        self._open_session: Optional[int] = None
        self._last_timer = 0
        self._active_timer: Optional[int] = None
        self._effects: List[Effect] = []
        self._accepts: Set[Tuple[Type[Event], State]] = {
            (edge.event, source) for edge in EDGES for source in edge.sources
        }
        self._model = _Model()
        actions: Dict[str, Callable[[EventData], None]] = {
            "open_channel": self._open_channel,
            "open_stream": self._open_stream,
            "go_live": self._go_live,
            "dispatch": self._dispatch,
            "nothing": lambda _data: None,
            "retry_later": self._retry_later,
            "retry_now": self._retry_now,
            "shut_down": self._shut_down,
        }
        Machine(
            model=self._model,
            states=State,
            initial=State.Disconnected,
            transitions=[
                {
                    # transitions fires by name; the table itself is keyed by the class.
                    "trigger": edge.event.__name__,
                    "source": list(edge.sources),
                    "dest": edge.dest,
                    "after": actions[edge.action],
                }
                for edge in EDGES
            ],
            auto_transitions=False,
            send_event=True,
            queued=True,
        )

    @property
    def state(self) -> State:
        return self._model.state

    @property
    def session(self) -> Optional[int]:
        """The number of the connection attempt in progress, if any."""
        return self._open_session

    def handle(self, event: Event) -> Tuple[Effect, ...]:
        """Feed one event; return the effects the adapter must carry out, in order."""
        stale = self._staleness(event)
        if stale:
            return (Ignored(event, stale),)
        kind = type(event)
        if (kind, self.state) not in self._accepts:
            if (kind, self.state) in TOLERATED:
                return (Ignored(event, f"{kind.__name__} needs nothing in state {self.state.name}"),)
            raise InvalidTransition(self.state, event)
        self._effects = []
        self._model.trigger(kind.__name__, event=event)
        effects, self._effects = tuple(self._effects), []
        return effects

    def _staleness(self, event: Event) -> str:
        if isinstance(event, _SessionEvent) and event.session != self._open_session:
            return f"session {event.session} is no longer open"
        if isinstance(event, RetryTimerFired) and event.token != self._active_timer:
            return f"timer {event.token} was cancelled"
        return ""

    # Edge actions: each appends effects, nothing else.

    def _open_channel(self, _data: EventData) -> None:
        self._active_timer = None
        self._last_session += 1
        self._open_session = self._last_session
        self._effects.append(OpenChannel(self._last_session))

    def _open_stream(self, _data: EventData) -> None:
        assert self._open_session is not None
        self._effects.append(OpenStream(self._open_session))

    def _go_live(self, _data: EventData) -> None:
        assert self._open_session is not None
        self._delays = self._new_delays()
        self.last_failure = None
        self._effects.append(SessionLive(self._open_session))

    def _dispatch(self, data: EventData) -> None:
        event = data.kwargs["event"]
        assert isinstance(event, MessageReceived)
        self._effects.append(Dispatch(event.session, event.message))

    def _retry_later(self, data: EventData) -> None:
        event = data.kwargs["event"]
        assert isinstance(event, (ConnectFailed, StreamBroken))
        recovery = recovery_for(event.code)
        self.last_failure = recovery
        self._close_session(event.reason, recovery)
        if recovery.pace is Pace.CAP:
            # Jittered downwards like the backoff, so a fleet refused together does not retry
            # in lockstep; the backoff itself is left where it was.
            self._start_timer(self._cap * (1.0 - 0.2 * self._random()))
        else:
            self._start_timer(next(self._delays))

    def _retry_now(self, _data: EventData) -> None:
        self._close_session("certificates changed")
        self._cancel_timer()
        self._start_timer(0.0)

    def _shut_down(self, _data: EventData) -> None:
        self._cancel_timer()
        self._close_session("agent stopping")
        self._effects.append(Stopped())

    def _close_session(self, reason: str, recovery: Optional[Recovery] = None) -> None:
        if self._open_session is not None:
            self._effects.append(CloseSession(self._open_session, reason, recovery))
            self._open_session = None

    def _start_timer(self, delay: float) -> None:
        self._last_timer += 1
        self._active_timer = self._last_timer
        self._effects.append(StartTimer(self._last_timer, delay))

    def _cancel_timer(self) -> None:
        if self._active_timer is not None:
            self._effects.append(CancelTimer(self._active_timer))
            self._active_timer = None

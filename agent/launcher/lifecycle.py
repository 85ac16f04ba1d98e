"""The life cycle of one instance: states, every edge in one table, events in, effects out.

Theory of operation
-------------------
Each instance CM wants (or the store brings back) gets one :class:`InstanceLife`. It starts
**Idle**. ``StartRequested`` pulls the image (**Pulling**); ``ImageReady`` carries the item
config's run policy and creates the container (**Creating**); ``ProcessRunning`` opens the start
window (**Confirming**, 1.2 x startInterval as in the reference); ``StartWindowPassed`` while it
still runs confirms it (**Active**). A process that ends on its own (``Exited``) is reaped and,
while the burst allows, restarted after restartInterval (**Backoff**, then ``RestartTimerFired``
creates it again); once startBurst starts fell within startInterval it stays **Failed** with the
last exit as its error. ``StopRequested`` (CM) and ``TtlExpired`` (the cloud was away longer than
the offline TTL) halt it (**Stopping**); ``Stopped`` leaves it **Inactive**. ``Adopted`` takes a
container that survived an agent restart straight to Active.

This module does no I/O, reads no clock and starts no thread: times come in with the events
(``at``, seconds on any monotonic scale the runner chooses) and timers go out as effects that the
runner (``launcher.py``) arms and feeds back. Every launch gets a new run number; events of an
older run (a timer that fired late, the exit of a container we stopped) are ``Ignored``. An event
the table does not take in the current state is :class:`InvalidTransition`, never a silent drop.
Wire states (``activating``, ``active``, ``inactive``, ``failed``) are derived in ``WIRE_STATE``
and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Callable, Dict, FrozenSet, List, Optional, Tuple, Union


class Phase(Enum):
    Idle = "Idle"
    Pulling = "Pulling"
    Creating = "Creating"
    Confirming = "Confirming"
    Active = "Active"
    Backoff = "Backoff"
    Stopping = "Stopping"
    Inactive = "Inactive"
    Failed = "Failed"


P = Phase

# The one place wire states come from. Backoff is ``failed``: the process is down and CM sees its
# exit at once; the restart then reports ``activating`` and ``active`` again. Stopping is already
# ``inactive``: CM asked for it and nothing of the run is used any more.
WIRE_STATE: Dict[Phase, str] = {
    P.Idle: "activating", P.Pulling: "activating", P.Creating: "activating", P.Confirming: "activating",
    P.Active: "active", P.Backoff: "failed", P.Stopping: "inactive", P.Inactive: "inactive",
    P.Failed: "failed",
}

# Phases in which a batch's start or stop is decided (the batch's NodeInstancesStatus waits for them).
SETTLED: FrozenSet[Phase] = frozenset({P.Active, P.Backoff, P.Inactive, P.Failed})


# --- inputs that are not events


@dataclass(frozen=True)
class RunPolicy:
    """The item config's ``runParameters`` and ``offlineTTL`` (INSTANCES.md); seconds."""

    start_interval: float = 5.0
    start_burst: int = 3
    restart_interval: float = 1.0
    offline_ttl: Optional[float] = None

    @property
    def start_window(self) -> float:
        # The reference confirms a start after 1.2 x startInterval (INSTANCES.md "Running").
        return 1.2 * self.start_interval


@dataclass(frozen=True)
class Problem:
    """What went wrong, as CM's ErrorInfo carries it (the runner builds the message)."""

    aos_code: int
    message: str
    exit_code: int = 0


RUNTIME_CODE = 2  # ErrorInfo.aos_code for a crash (PROTOCOL.md: runtime)


@dataclass(frozen=True)
class ExitStatus:
    """How a process ended: ``code`` for a normal exit, ``signal`` (positive) for a kill; both
    None when the agent could not see it (an adopted container is not its child)."""

    code: Optional[int]
    signal: Optional[int]
    description: str

    def problem(self) -> Problem:
        number = self.signal if self.signal is not None else (self.code or 0)
        return Problem(RUNTIME_CODE, f"instance {self.description}", number)


@dataclass(frozen=True)
class OfflineClock:
    """How long the cloud has been away: ``since`` (wall seconds) or None while connected.

    INSTANCES.md: the clock starts at ConnectionStatus DISCONNECTED, or at agent start when the
    cloud is not known to be connected; reconnecting only resets it. The runner stores ``since``
    so that an agent restart does not reset it."""

    since: Optional[float]

    def on_cloud(self, connected: bool, at: float) -> OfflineClock:
        if connected:
            return OfflineClock(None)
        return self if self.since is not None else OfflineClock(at)

    def deadline(self, ttl: Optional[float]) -> Optional[float]:
        """When an instance with ``ttl`` must stop; None when it needs not."""
        if ttl is None or self.since is None:
            return None
        return self.since + ttl

    def expired(self, ttl: Optional[float], now: float) -> bool:
        deadline = self.deadline(ttl)
        return deadline is not None and now >= deadline


# --- events (frozen; ``run`` names the launch they belong to)


@dataclass(frozen=True)
class StartRequested:
    """CM (or the store, after an agent restart) wants it running: a fresh burst."""


@dataclass(frozen=True)
class ImageReady:
    run: int
    policy: RunPolicy


@dataclass(frozen=True)
class ProcessRunning:
    run: int
    at: float


@dataclass(frozen=True)
class StartWindowPassed:
    run: int


@dataclass(frozen=True)
class LaunchFailed:
    run: int
    problem: Problem


@dataclass(frozen=True)
class Exited:
    run: int
    at: float
    status: ExitStatus


@dataclass(frozen=True)
class RestartTimerFired:
    run: int


@dataclass(frozen=True)
class StopRequested:
    """``forget``: CM stopped it (drop it from memory and the store once stopped)."""

    forget: bool


@dataclass(frozen=True)
class TtlExpired:
    """The cloud has been away longer than this instance's offline TTL."""


@dataclass(frozen=True)
class Stopped:
    run: int


@dataclass(frozen=True)
class StopFailed:
    run: int
    problem: Problem


@dataclass(frozen=True)
class Adopted:
    """After an agent restart its container still runs: take it over as it is."""

    policy: RunPolicy
    at: float


@dataclass(frozen=True)
class Faulted:
    """The runner could not carry a batch through (the store failed, a bug): fail, with why."""

    problem: Problem


Event = Union[StartRequested, ImageReady, ProcessRunning, StartWindowPassed, LaunchFailed, Exited,
              RestartTimerFired, StopRequested, TtlExpired, Stopped, StopFailed, Adopted, Faulted]


# --- effects (the runner carries them out in order)


@dataclass(frozen=True)
class Report:
    """Send this instance's status to CM."""


@dataclass(frozen=True)
class Pull:
    run: int


@dataclass(frozen=True)
class Attach:
    """Give the run its network namespace (loopback only, or on its network: NETWORK.md) before
    its container is created; a failure rolls back what the attach did and fails the launch."""

    run: int


@dataclass(frozen=True)
class Create:
    """Write the bundle and start the container; answer ProcessRunning or LaunchFailed."""

    run: int


@dataclass(frozen=True)
class Detach:
    """The run's container is gone (or never came): undo its network attach. A detach older than
    the attach in place is stale and changes nothing."""

    run: int


@dataclass(frozen=True)
class StartTimer:
    """Feed ``fire`` back after ``seconds``; replaces the instance's previous timer."""

    seconds: float
    fire: Event


@dataclass(frozen=True)
class CancelTimer:
    pass


@dataclass(frozen=True)
class Watch:
    """Register with the monitor."""


@dataclass(frozen=True)
class Unwatch:
    pass


@dataclass(frozen=True)
class Reap:
    """Remove the ended container, keep a crash record, alert CM."""

    run: int
    status: ExitStatus


@dataclass(frozen=True)
class Halt:
    """End the container (TERM, then KILL) and remove it; answer Stopped or StopFailed."""

    run: int


@dataclass(frozen=True)
class Forget:
    """Drop the instance from memory and the store."""


@dataclass(frozen=True)
class Ignored:
    event: object
    reason: str


Effect = Union[Report, Pull, Attach, Create, Detach, StartTimer, CancelTimer, Watch, Unwatch, Reap, Halt, Forget, Ignored]


# --- the table


@dataclass(frozen=True)
class Edge:
    """``event`` moves ``sources`` to ``dest`` when ``guard`` holds; ``action`` makes the effects."""

    event: str
    sources: Tuple[Phase, ...]
    dest: Phase
    action: str
    guard: str = ""


_LAUNCHING = (P.Pulling, P.Creating)
_RUNNING = (P.Confirming, P.Active)
_UP = _LAUNCHING + _RUNNING + (P.Backoff,)

EDGES: Tuple[Edge, ...] = (
    # IDLE/INACTIVE/FAILED -> PULLING: CM starts it (again); the burst starts over.
    Edge("StartRequested", (P.Idle, P.Inactive, P.Failed), P.Pulling, "pull"),
    # PULLING -> CREATING: the image is there; its item config gives the run policy.
    Edge("ImageReady", (P.Pulling,), P.Creating, "create"),
    # CREATING -> CONFIRMING: the runtime started the process; the start window opens.
    Edge("ProcessRunning", (P.Creating,), P.Confirming, "open_window"),
    # CONFIRMING -> ACTIVE: still running at the end of the window.
    Edge("StartWindowPassed", (P.Confirming,), P.Active, "confirm"),
    # PULLING/CREATING -> FAILED: no image, no runtime, a bundle or runtime error.
    Edge("LaunchFailed", _LAUNCHING, P.Failed, "fail"),
    # CONFIRMING/ACTIVE -> BACKOFF: it ended on its own and the burst allows another start.
    Edge("Exited", _RUNNING, P.Backoff, "schedule_restart", "burst_left"),
    # CONFIRMING/ACTIVE -> FAILED: burst exhausted (startBurst starts within startInterval).
    Edge("Exited", _RUNNING, P.Failed, "give_up", "burst_exhausted"),
    # BACKOFF -> CREATING: restartInterval passed; same image, new container.
    Edge("RestartTimerFired", (P.Backoff,), P.Creating, "restart"),
    # any but STOPPING -> STOPPING: CM stops it (or restarts it with a new InstanceInfo).
    Edge("StopRequested", (P.Idle,) + _UP + (P.Inactive, P.Failed), P.Stopping, "halt"),
    # STOPPING -> STOPPING: CM stops what a TTL is already stopping: forget it once stopped.
    Edge("StopRequested", (P.Stopping,), P.Stopping, "also_forget"),
    # UP -> STOPPING: the cloud was away longer than the offline TTL.
    Edge("TtlExpired", _UP, P.Stopping, "halt"),
    # IDLE -> INACTIVE: brought back from the store with its TTL already passed: never started.
    Edge("TtlExpired", (P.Idle,), P.Inactive, "report"),
    # STOPPING -> INACTIVE: the container is gone.
    Edge("Stopped", (P.Stopping,), P.Inactive, "settle"),
    # STOPPING -> FAILED: the runtime could not end or remove it.
    Edge("StopFailed", (P.Stopping,), P.Failed, "settle"),
    # IDLE -> ACTIVE: after an agent restart its container still runs.
    Edge("Adopted", (P.Idle,), P.Active, "adopt"),
    # IDLE/PULLING/CREATING/STOPPING -> FAILED: the runner could not go on (store error, bug).
    Edge("Faulted", (P.Idle,) + _LAUNCHING + (P.Stopping,), P.Failed, "fault"),
)

# Events that may race with a state and carry nothing there: answered with ``Ignored``.
TOLERATED = {
    *(("TtlExpired", phase) for phase in (P.Stopping, P.Inactive, P.Failed)),
}


class LifecycleError(Exception):
    """Base of the core's own errors."""


class InvalidTransition(LifecycleError):
    """Our fault: the table does not take this event in this state."""

    def __init__(self, phase: Phase, event: object) -> None:
        super().__init__(f"{type(event).__name__} is not valid in state {phase.name}")
        self.phase = phase
        self.event = event


class InstanceLife:
    """One instance's state machine: ``handle(event) -> effects``."""

    def __init__(self, default_policy: RunPolicy = RunPolicy(), *, first_run: int = 0) -> None:
        """``first_run``: the last run number of the life this one replaces, so that events of
        that life's runs stay stale."""
        self.phase = P.Idle
        self.policy = default_policy
        self.problem: Optional[Problem] = None
        self.run = first_run
        self._starts: List[float] = []  # when each start of the current burst happened
        self._forget = False
        self._watched = False
        self._last_exit_at = 0.0
        self._actions: Dict[str, Callable[[Event], List[Effect]]] = {
            "pull": self._pull, "create": self._create, "open_window": self._open_window,
            "confirm": lambda _event: [Report()], "fail": self._fail,
            "schedule_restart": self._schedule_restart, "give_up": self._give_up, "restart": self._restart,
            "halt": self._halt, "also_forget": self._also_forget, "report": lambda _event: [Report()],
            "settle": self._settle, "adopt": self._adopt, "fault": self._fault,
        }
        self._guards: Dict[str, Callable[[Event], bool]] = {
            "": lambda _event: True,
            "burst_left": lambda event: not self._burst_exhausted(event),
            "burst_exhausted": self._burst_exhausted,
        }

    @property
    def wire_state(self) -> str:
        return WIRE_STATE[self.phase]

    @property
    def forget(self) -> bool:
        return self._forget

    def handle(self, event: Event) -> Tuple[Effect, ...]:
        """Feed one event; the effects the runner must carry out, in order."""
        run = getattr(event, "run", None)
        if run is not None and run != self.run:
            return (Ignored(event, f"from run {run}; the current run is {self.run}"),)
        name = type(event).__name__
        for edge in EDGES:
            if edge.event == name and self.phase in edge.sources and self._guards[edge.guard](event):
                self.phase = edge.dest
                return tuple(self._actions[edge.action](event))
        if (name, self.phase) in TOLERATED:
            return (Ignored(event, f"{name} needs nothing in state {self.phase.name}"),)
        raise InvalidTransition(self.phase, event)

    # --- guards

    def _burst_exhausted(self, event: Event) -> bool:
        assert isinstance(event, Exited)
        next_start = event.at + self.policy.restart_interval
        recent = [start for start in self._starts if start > next_start - self.policy.start_interval]
        return len(recent) >= self.policy.start_burst

    # --- actions

    def _pull(self, _event: Event) -> List[Effect]:
        self.run += 1
        self.problem = None
        self._starts = []
        self._forget = False
        return [Report(), Pull(self.run)]

    def _create(self, event: Event) -> List[Effect]:
        assert isinstance(event, ImageReady)
        self.policy = event.policy
        return [Attach(self.run), Create(self.run)]

    def _open_window(self, event: Event) -> List[Effect]:
        assert isinstance(event, ProcessRunning)
        self._starts.append(event.at)
        self._watched = True
        return [Watch(), StartTimer(self.policy.start_window, StartWindowPassed(self.run))]

    def _fail(self, event: Event) -> List[Effect]:
        assert isinstance(event, LaunchFailed)
        self.problem = event.problem
        return [Detach(self.run), Report()]

    def _ended(self, event: Event) -> List[Effect]:
        assert isinstance(event, Exited)
        self.problem = event.status.problem()
        self._last_exit_at = event.at
        self._watched = False
        return [CancelTimer(), Unwatch(), Reap(self.run, event.status), Detach(self.run)]

    def _schedule_restart(self, event: Event) -> List[Effect]:
        effects = self._ended(event)
        return effects + [Report(), StartTimer(self.policy.restart_interval, RestartTimerFired(self.run))]

    def _give_up(self, event: Event) -> List[Effect]:
        return self._ended(event) + [Report()]

    def _restart(self, _event: Event) -> List[Effect]:
        self.run += 1
        self.problem = None
        return [Report(), Attach(self.run), Create(self.run)]

    def _halt(self, event: Event) -> List[Effect]:
        if isinstance(event, StopRequested):
            self._forget = event.forget
        self.run += 1  # whatever the old run still reports is stale from now on
        effects: List[Effect] = [CancelTimer()]
        if self._watched:
            self._watched = False
            effects.append(Unwatch())
        return effects + [Halt(self.run)]

    def _also_forget(self, event: Event) -> List[Effect]:
        assert isinstance(event, StopRequested)
        self._forget = self._forget or event.forget
        return []

    def _settle(self, event: Event) -> List[Effect]:
        self.problem = event.problem if isinstance(event, StopFailed) else None
        return [Detach(self.run), Report(), Forget()] if self._forget else [Detach(self.run), Report()]

    def _adopt(self, event: Event) -> List[Effect]:
        assert isinstance(event, Adopted)
        self.run += 1
        self.policy = event.policy
        self._starts = [event.at]
        self._watched = True
        return [Watch()]

    def _fault(self, event: Event) -> List[Effect]:
        assert isinstance(event, Faulted)
        self.run += 1
        self.problem = event.problem
        return [CancelTimer(), Detach(self.run), Report()]

"""The SM gateway: runs the pure session core's effects over a transport and feeds results back in.

The transport is a port (agent/transport.py): gRPC in production, an in-memory fake in most
tests. Threads and why:
- ``feed`` serialises every event under one lock and drains a queue, so events fed from inside
  an effect (``Registered`` after ``OpenStream``) are handled before any other thread's event:
  CM's first message can never be dispatched before the session counts as Synced.
- A connect thread per attempt waits for the connection to become ready (TLS verified) without
  blocking the lock; its result comes back as ``ChannelReady`` or ``ConnectFailed``.
- A reader thread per stream turns CM's raw frames into ``MessageReceived`` and the end of the
  stream into ``StreamBroken`` with its status code; handlers run on it (they parse the frame:
  one that does not decode costs that message, not the stream), long work moves to the
  subsystems' own workers.
- Retry timers are ``threading.Timer``s; a certificate watcher polls the files once a second.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2
from aos_sm.statemachine import RateLimiter, Recovery, SessionCore, SessionError, State
from aos_sm.statemachine import effects as fx
from aos_sm.statemachine import events as ev
from aos_sm.statemachine.status import describe

from .certwatch import CertificateWatcher
from .config import AgentConfig
from .errors import Failed
from .outbox import Outbox
from .transport import BlobUrlClient, Connection, GrpcTransport, Stream, Transport, TransportFailure

log = logging.getLogger(__name__)

Registration = Callable[[], Tuple[sm_pb2.SMInfo, sm_pb2.NodeInstancesStatus]]
FrameHandler = Callable[[bytes], None]

CONNECT_TIMEOUT = 5.0
# A configuration problem repeats on every attempt (at the cap pace): say it once a minute.
PROBLEM_LOG_INTERVAL = 60.0


class UnknownEffect(Failed):
    """Our fault: the core asked for an effect this interpreter does not know."""


@dataclass
class _Session:
    number: int
    connection: Optional[Connection] = None
    stream: Optional[Stream] = None

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
        if self.connection is not None:
            self.connection.close()


class Gateway:
    def __init__(
        self,
        config: AgentConfig,
        *,
        registration: Registration,
        handler: FrameHandler,
        outbox: Outbox,
        target: str = "",
        transport: Optional[Transport] = None,
        blob_urls: Optional[BlobUrlClient] = None,
        random_source: Optional[random.Random] = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        watch_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._target = target or config.cm_server_url or ""
        self._transport: Transport = transport or GrpcTransport(config, self._target)
        self._registration = registration
        self._handler = handler
        self._outbox = outbox
        self.blob_urls = blob_urls or BlobUrlClient()
        self._connect_timeout = connect_timeout
        self._clock = clock
        self._problem_log = RateLimiter(PROBLEM_LOG_INTERVAL)
        self._core = SessionCore(
            reconnect_timeout=config.reconnect_first_wait,
            reconnect_max_timeout=config.reconnect_cap,
            random=(random_source or random.Random()).random,
        )
        self._lock = threading.RLock()
        self._events: Deque[ev.Event] = collections.deque()
        self._draining = False
        self._sessions: Dict[int, _Session] = {}
        self._timers: Dict[int, threading.Timer] = {}
        self._stopped = threading.Event()
        self._synced = threading.Condition(self._lock)
        self._sync_count = 0
        self._watcher = CertificateWatcher(
            config.certificate_files if config.tls_mode != "plaintext" else (),
            on_change=lambda: self.feed(ev.CertificatesChanged()),
            interval=watch_interval,
        )
        # (event, resulting state), the latest few, for tests and status: bounded, since a
        # long-lived agent handles millions of events.
        self.history: Deque[Tuple[str, str]] = collections.deque(maxlen=256)
        # The effect interpreter: one runner per effect class; anything else is an error (_run).
        self._runners: Dict[type, Callable[[Any], None]] = {
            fx.OpenChannel: self._open_channel,
            fx.OpenStream: self._open_stream,
            fx.SessionLive: self._go_live,
            fx.Dispatch: self._dispatch,
            fx.CloseSession: self._close,
            fx.StartTimer: self._start_timer,
            fx.CancelTimer: self._cancel_timer,
            fx.Stopped: self._on_stopped,
            fx.Ignored: self._ignored,
        }
        # Called on the pump, under the lock, when the state changes (systemd STATUS=): keep quick.
        self.state_listeners: List[Callable[[State], None]] = []

    # Public API.

    @property
    def state(self) -> State:
        return self._core.state

    @property
    def sync_count(self) -> int:
        """How many sessions reached Synced since start."""
        return self._sync_count

    def start(self) -> None:
        self._watcher.start()
        self.feed(ev.Start())

    def stop(self, timeout: float = 5.0) -> bool:
        self.feed(ev.Stop())
        self._watcher.stop()
        return self._stopped.wait(timeout)

    def wait_synced(self, count: int = 1, timeout: float = 10.0) -> bool:
        """Block until ``count`` sessions have reached Synced (tests, demo, benchmarks)."""
        with self._synced:
            return self._synced.wait_for(lambda: self._sync_count >= count, timeout)

    @property
    def problem(self) -> Optional[Recovery]:
        """The status policy's verdict on the last failure, until a session is synced again."""
        return self._core.last_failure

    def in_loop(self, call: Callable[[], None]) -> None:
        """Run ``call`` on the event pump, between two events. It waits while a handler holds the
        pump, which makes it the systemd watchdog's liveness probe (agent/sdnotify.py)."""
        with self._lock:
            call()

    # The event pump.

    def feed(self, event: ev.Event) -> None:
        with self._lock:
            self._events.append(event)
            if self._draining:
                return
            self._draining = True
            try:
                while self._events:
                    self._handle(self._events.popleft())
            finally:
                self._draining = False

    def _handle(self, event: ev.Event) -> None:
        if isinstance(event, ev.RetryTimerFired):
            self._timers.pop(event.token, None)
        before = self.state
        try:
            effects = self._core.handle(event)
        except SessionError:  # our fault, not CM's: log it loudly and keep the session going
            log.exception("session core refused %s in %s", type(event).__name__, self.state.name)
            return
        self.history.append((type(event).__name__, self.state.name))
        if self.state is not before:
            for listener in self.state_listeners:
                listener(self.state)
        for effect in effects:
            self._run(effect)

    def _run(self, effect: fx.Effect) -> None:
        runner = self._runners.get(type(effect))
        if runner is None:  # a core newer than this interpreter: a bug to surface, not to skip
            raise UnknownEffect(f"the gateway cannot run effect {effect!r}")
        runner(effect)

    # Effects.

    def _open_channel(self, effect: fx.OpenChannel) -> None:
        number = effect.session
        session = _Session(number)
        self._sessions[number] = session
        log.info("connecting to CM at %s (%s, attempt %d)", self._target, self._config.tls_mode, number)
        try:
            session.connection = self._transport.connect()
        except TransportFailure as err:
            self._events.append(ev.ConnectFailed(number, str(err), err.code))
            return
        except Exception as err:  # e.g. a target gRPC cannot parse: fail the attempt, not the pump
            log.exception("cannot connect to CM at %s", self._target)
            self._events.append(ev.ConnectFailed(number, f"connect failed: {err}", "UNKNOWN"))
            return
        threading.Thread(
            target=self._await_ready, args=(session, session.connection), name=f"sm-connect-{number}",
            daemon=True,
        ).start()

    def _await_ready(self, session: _Session, connection: Connection) -> None:
        try:
            connection.wait_ready(self._connect_timeout)
        except TransportFailure as err:
            self.feed(ev.ConnectFailed(session.number, str(err), err.code))
        except Exception as err:  # an adapter bug must not leave the session Connecting forever
            log.exception("waiting for CM failed")
            self.feed(ev.ConnectFailed(session.number, f"connect failed: {err}", "UNKNOWN"))
        else:
            self.feed(ev.ChannelReady(session.number))

    def _open_stream(self, effect: fx.OpenStream) -> None:
        number = effect.session
        session = self._sessions[number]
        assert session.connection is not None
        try:
            sm_info, instances = self._registration()
        except Exception as err:  # a failing probe must not kill the agent: retry later
            log.exception("cannot build the registration")
            self._events.append(ev.StreamBroken(number, f"registration failed: {err}", "INTERNAL"))
            return
        try:
            stream = session.connection.open_stream([
                sm_pb2.SMOutgoingMessages(sm_info=sm_info),
                sm_pb2.SMOutgoingMessages(node_instances_status=instances),
            ])
        except Exception as err:  # an adapter failure: this attempt ends, the next one may work
            log.exception("cannot open RegisterSM")
            self._events.append(ev.StreamBroken(number, f"cannot open the stream: {err}", "UNKNOWN"))
            return
        session.stream = stream
        threading.Thread(
            target=self._read, args=(session.number, stream), name=f"sm-reader-{number}", daemon=True
        ).start()
        self._events.append(ev.Registered(number))

    def _go_live(self, effect: fx.SessionLive) -> None:
        session = self._sessions[effect.session]
        assert session.connection is not None and session.stream is not None
        self.blob_urls.attach(session.connection)
        sent = self._outbox.attach(session.stream.send, session.stream.backlog)
        self._sync_count += 1
        self._synced.notify_all()
        log.info("registered with CM as node %s%s", self._config.node_id,
                 f"; sent {sent} messages kept during the outage" if sent else "")

    def _read(self, number: int, stream: Stream) -> None:
        while True:
            try:
                frame = stream.receive()
            except TransportFailure as err:
                self.feed(ev.StreamBroken(number, str(err), err.code))
                return
            except Exception as err:  # an adapter bug ends this stream, not the reader silently
                log.exception("reading from CM failed")
                self.feed(ev.StreamBroken(number, f"read failed: {err}", "UNKNOWN"))
                return
            self.feed(ev.MessageReceived(number, frame))

    def _dispatch(self, effect: fx.Dispatch) -> None:
        frame = effect.message
        assert isinstance(frame, bytes)
        try:
            self._handler(frame)
        except Exception:  # the dispatcher answers errors itself; this is a last guard
            log.exception("handling a %d-byte frame from CM failed", len(frame))
        self._events.append(ev.Processed(effect.session))

    def _close(self, effect: fx.CloseSession) -> None:
        session = self._sessions.pop(effect.session, None)
        if session is None:
            return
        if session.connection is not None:
            self.blob_urls.detach(session.connection)
        if session.stream is not None:
            self._outbox.detach()
        self._log_close(effect)
        session.close()

    def _log_close(self, effect: fx.CloseSession) -> None:
        recovery = effect.recovery
        if recovery is None or not recovery.configuration_problem:
            line = describe(recovery, effect.reason) if recovery is not None else effect.reason
            log.warning("session %d with CM at %s closed: %s", effect.session, self._target, line)
            return
        passes, held = self._problem_log.allow(recovery.code, self._clock())
        if passes:
            again = f" ({held} more attempts failed the same way)" if held else ""
            log.error("CM at %s: %s%s", self._target, describe(recovery, effect.reason), again)
        else:
            log.debug("session %d closed: %s", effect.session, effect.reason)

    def _start_timer(self, effect: fx.StartTimer) -> None:
        if effect.delay > 0:
            log.info("reconnecting to CM in %.1fs", effect.delay)
        timer = threading.Timer(effect.delay, self.feed, args=(ev.RetryTimerFired(effect.token),))
        timer.daemon = True
        self._timers[effect.token] = timer
        timer.start()

    def _cancel_timer(self, effect: fx.CancelTimer) -> None:
        timer = self._timers.pop(effect.token, None)
        if timer is not None:
            timer.cancel()

    def _on_stopped(self, _effect: fx.Stopped) -> None:
        log.info("stopped")
        self._stopped.set()

    def _ignored(self, effect: fx.Ignored) -> None:
        log.debug("ignored %s: %s", type(effect.event).__name__, effect.why)

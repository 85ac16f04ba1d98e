"""The SM gateway: runs the pure session core's effects over gRPC and feeds results back in.

Threads and why:
- ``feed`` serialises every event under one lock and drains a queue, so events fed from inside
  an effect (``Registered`` after ``OpenStream``) are handled before any other thread's event:
  CM's first message can never be dispatched before the session counts as Synced.
- A connect thread per attempt waits for the channel to become ready (TLS verified) without
  blocking the lock; its result comes back as ``ChannelReady`` or ``ConnectFailed``.
- A reader thread per stream turns CM messages into ``MessageReceived`` and the end of the stream
  into ``StreamBroken``; handlers run on it, long work moves to the subsystems' own workers.
- Retry timers are ``threading.Timer``s; a certificate watcher polls the files once a second.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, List, Optional, Tuple

import grpc

from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2
from aos_sm.statemachine import SessionCore, SessionError, State
from aos_sm.statemachine import effects as fx
from aos_sm.statemachine import events as ev

from . import rpc
from .certwatch import CertificateWatcher
from .config import AgentConfig
from .errors import AosError, Failed, NotFound, Timeout, WrongState
from .outbox import Outbox
from .writequeue import WriteQueue

log = logging.getLogger(__name__)

Registration = Callable[[], Tuple[sm_pb2.SMInfo, sm_pb2.NodeInstancesStatus]]
Handler = Callable[[sm_pb2.SMIncomingMessages], None]

CONNECT_TIMEOUT = 5.0


@dataclass
class _Session:
    number: int
    channel: Optional[grpc.Channel] = None
    ready: Optional["grpc.Future[None]"] = None
    call: Optional[grpc.Call] = None
    writes: WriteQueue[sm_pb2.SMOutgoingMessages] = field(default_factory=WriteQueue)

    def close(self) -> None:
        self.writes.close()
        if self.ready is not None:
            self.ready.cancel()
        if self.call is not None:
            self.call.cancel()
        if self.channel is not None:
            self.channel.close()


class Gateway:
    def __init__(
        self,
        config: AgentConfig,
        *,
        target: str,
        registration: Registration,
        handler: Handler,
        outbox: Outbox,
        random_source: Optional[random.Random] = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        watch_interval: float = 1.0,
    ) -> None:
        self._config = config
        self._target = target
        self._registration = registration
        self._handler = handler
        self._outbox = outbox
        self._connect_timeout = connect_timeout
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
        self._live_channel: Optional[grpc.Channel] = None
        self._watcher = CertificateWatcher(
            config.certificate_files if config.tls_mode != "plaintext" else (),
            on_change=lambda: self.feed(ev.CertificatesChanged()),
            interval=watch_interval,
        )
        # (event, resulting state), the latest few, for tests and status: bounded, since a
        # long-lived agent handles millions of events.
        self.history: Deque[Tuple[str, str]] = collections.deque(maxlen=256)
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

    def get_blobs_infos(self, digests: List[str], timeout: float = 30.0) -> List[str]:
        """Resolve blob digests to URLs through CM, in request order."""
        channel = self._live_channel
        if channel is None:
            raise WrongState("not connected to CM: cannot resolve blob URLs")
        try:
            reply = rpc.get_blobs_infos(channel)(
                sm_pb2.BlobsInfosRequest(digests=digests), timeout=timeout
            )
        except grpc.RpcError as err:
            code = err.code() if isinstance(err, grpc.Call) else None
            details = err.details() if isinstance(err, grpc.Call) else str(err)
            error: AosError
            if code == grpc.StatusCode.NOT_FOUND:
                error = NotFound(f"CM knows no URL for a digest: {details}")
            elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
                error = Timeout(f"GetBlobsInfos timed out after {timeout}s")
            else:
                error = Failed(f"GetBlobsInfos failed: {code.name if code else ''} {details}")
            raise error from err
        if len(reply.urls) != len(digests):
            raise Failed(f"GetBlobsInfos returned {len(reply.urls)} URLs for {len(digests)} digests")
        return list(reply.urls)

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
        if isinstance(effect, fx.OpenChannel):
            self._open_channel(effect.session)
        elif isinstance(effect, fx.OpenStream):
            self._open_stream(effect.session)
        elif isinstance(effect, fx.SessionLive):
            self._go_live(effect.session)
        elif isinstance(effect, fx.Dispatch):
            self._dispatch(effect)
        elif isinstance(effect, fx.CloseSession):
            self._close(effect)
        elif isinstance(effect, fx.StartTimer):
            self._start_timer(effect)
        elif isinstance(effect, fx.CancelTimer):
            timer = self._timers.pop(effect.token, None)
            if timer is not None:
                timer.cancel()
        elif isinstance(effect, fx.Stopped):
            log.info("stopped")
            self._stopped.set()
        elif isinstance(effect, fx.Ignored):
            log.debug("ignored %r: %s", effect.event, effect.why)

    # Effects.

    def _open_channel(self, number: int) -> None:
        session = _Session(number)
        self._sessions[number] = session
        log.info("connecting to CM at %s (%s, attempt %d)", self._target, self._config.tls_mode, number)
        try:
            session.channel = rpc.make_channel(
                self._target, rpc.make_credentials(self._config),
                rpc.reconnect_options(self._config.reconnect_first_wait, self._config.reconnect_cap))
        except AosError as err:
            self._events.append(ev.ConnectFailed(number, str(err)))
            return
        session.ready = grpc.channel_ready_future(session.channel)
        threading.Thread(
            target=self._await_ready, args=(session,), name=f"sm-connect-{number}", daemon=True
        ).start()

    def _await_ready(self, session: _Session) -> None:
        assert session.ready is not None
        try:
            session.ready.result(timeout=self._connect_timeout)
        except grpc.FutureTimeoutError:
            self.feed(ev.ConnectFailed(session.number, f"CM not ready within {self._connect_timeout}s "
                                       "(unreachable, or its certificate is not trusted)"))
        except grpc.FutureCancelledError:
            self.feed(ev.ConnectFailed(session.number, "connect cancelled"))
        else:
            self.feed(ev.ChannelReady(session.number))

    def _open_stream(self, number: int) -> None:
        session = self._sessions[number]
        assert session.channel is not None
        try:
            sm_info, instances = self._registration()
        except Exception as err:  # a failing probe must not kill the agent: retry later
            log.exception("cannot build the registration")
            self._events.append(ev.StreamBroken(number, f"registration failed: {err}"))
            return
        # Queued before the call starts, so gRPC writes them first, in this order.
        session.writes.put(sm_pb2.SMOutgoingMessages(sm_info=sm_info))
        session.writes.put(sm_pb2.SMOutgoingMessages(node_instances_status=instances))
        session.call = rpc.register_sm(session.channel)(iter(session.writes))
        threading.Thread(
            target=self._read, args=(session,), name=f"sm-reader-{number}", daemon=True
        ).start()
        self._events.append(ev.Registered(number))

    def _go_live(self, number: int) -> None:
        session = self._sessions[number]
        self._live_channel = session.channel
        sent = self._outbox.attach(session.writes.put, session.writes.backlog)
        self._sync_count += 1
        self._synced.notify_all()
        log.info("registered with CM as node %s%s", self._config.node_id,
                 f"; sent {sent} messages kept during the outage" if sent else "")

    def _read(self, session: _Session) -> None:
        assert session.call is not None
        reason = "CM ended the stream"
        try:
            for message in session.call:  # type: ignore[attr-defined]
                self.feed(ev.MessageReceived(session.number, message))
        except grpc.RpcError as err:
            code = err.code() if isinstance(err, grpc.Call) else None
            details = err.details() if isinstance(err, grpc.Call) else str(err)
            reason = f"{code.name if code else 'error'}: {details}"
        self.feed(ev.StreamBroken(session.number, reason))

    def _dispatch(self, effect: fx.Dispatch) -> None:
        message = effect.message
        assert isinstance(message, sm_pb2.SMIncomingMessages)
        try:
            self._handler(message)
        except Exception:  # the dispatcher answers errors itself; this is a last guard
            log.exception("handling %s failed", message.WhichOneof("SMIncomingMessage"))
        self._events.append(ev.Processed(effect.session))

    def _close(self, effect: fx.CloseSession) -> None:
        session = self._sessions.pop(effect.session, None)
        if session is None:
            return
        if self._live_channel is session.channel:
            self._live_channel = None
            self._outbox.detach()
        log.warning("session %d with CM closed: %s", effect.session, effect.reason)
        session.close()

    def _start_timer(self, effect: fx.StartTimer) -> None:
        if effect.delay > 0:
            log.info("reconnecting to CM in %.1fs", effect.delay)
        timer = threading.Timer(effect.delay, self.feed, args=(ev.RetryTimerFired(effect.token),))
        timer.daemon = True
        self._timers[effect.token] = timer
        timer.start()

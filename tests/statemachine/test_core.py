"""Drive the pure session core with events and assert its effects. Nothing here sleeps."""

from __future__ import annotations

import random

import pytest

from aos_sm.statemachine import InvalidTransition, SessionCore, State, recovery_for
from aos_sm.statemachine.effects import (
    CancelTimer,
    CloseSession,
    Dispatch,
    Ignored,
    OpenChannel,
    OpenStream,
    SessionLive,
    StartTimer,
    Stopped,
)
from aos_sm.statemachine.events import (
    CertificatesChanged,
    ChannelReady,
    ConnectFailed,
    MessageReceived,
    Processed,
    Registered,
    RetryTimerFired,
    Start,
    Stop,
    StreamBroken,
)


def make_core(initial: float = 10.0, maximum: float = 60.0) -> SessionCore:
    return SessionCore(
        reconnect_timeout=initial, reconnect_max_timeout=maximum, random=random.Random(7).random
    )


def synced_core() -> SessionCore:
    core = make_core()
    core.handle(Start())
    core.handle(ChannelReady(1))
    core.handle(Registered(1))
    assert core.state is State.Synced
    return core


def test_start_connects_registers_and_goes_live_in_order() -> None:
    core = make_core()
    assert core.state is State.Disconnected
    assert core.handle(Start()) == (OpenChannel(1),)
    assert core.state is State.Connecting
    assert core.handle(ChannelReady(1)) == (OpenStream(1),)
    assert core.state is State.Registering
    assert core.handle(Registered(1)) == (SessionLive(1),)
    assert core.state is State.Synced


def test_a_message_is_dispatched_in_processing_and_returns_to_synced() -> None:
    core = synced_core()
    message = object()
    assert core.handle(MessageReceived(1, message)) == (Dispatch(1, message),)
    assert core.state is State.Processing
    assert core.handle(Processed(1)) == ()
    assert core.state is State.Synced


@pytest.mark.parametrize("state_events", [(), ("ChannelReady",), ("ChannelReady", "Registered")])
def test_a_broken_stream_closes_the_session_and_backs_off(state_events: tuple[str, ...]) -> None:
    core = make_core(initial=10.0)
    core.handle(Start())
    events = {"ChannelReady": ChannelReady(1), "Registered": Registered(1)}
    for name in state_events:
        core.handle(events[name])
    broken = StreamBroken(1, "peer reset") if state_events else ConnectFailed(1, "refused")
    assert core.handle(broken) == (
        CloseSession(1, broken.reason, recovery_for(broken.code)), StartTimer(1, 10.0)
    )
    assert core.state is State.Backoff


def test_the_retry_timer_opens_a_new_session_and_old_events_are_stale() -> None:
    core = synced_core()
    core.handle(StreamBroken(1, "eof"))
    assert core.handle(RetryTimerFired(1)) == (OpenChannel(2),)
    assert core.state is State.Connecting
    late = StreamBroken(1, "reader noticed late")
    effects = core.handle(late)
    assert len(effects) == 1 and isinstance(effects[0], Ignored) and effects[0].event == late
    assert core.state is State.Connecting


def test_a_cancelled_timer_is_ignored() -> None:
    core = synced_core()
    core.handle(StreamBroken(1, "eof"))
    assert core.handle(CertificatesChanged()) == (CancelTimer(1), StartTimer(2, 0.0))
    assert isinstance(core.handle(RetryTimerFired(1))[0], Ignored)
    assert core.state is State.Backoff
    assert core.handle(RetryTimerFired(2)) == (OpenChannel(2),)


@pytest.mark.parametrize("events", [[], [ChannelReady(1)], [ChannelReady(1), Registered(1)]])
def test_certificate_change_closes_the_session_and_reconnects_at_once(events: list) -> None:
    core = make_core()
    core.handle(Start())
    for event in events:
        core.handle(event)
    assert core.handle(CertificatesChanged()) == (
        CloseSession(1, "certificates changed"),
        StartTimer(1, 0.0),
    )
    assert core.state is State.Backoff


def test_certificate_change_while_processing_goes_to_backoff() -> None:
    core = synced_core()
    core.handle(MessageReceived(1, "m"))
    core.handle(CertificatesChanged())
    assert core.state is State.Backoff
    assert isinstance(core.handle(Processed(1))[0], Ignored)


def _drive_to(state: State) -> SessionCore:
    core = make_core()
    path = {
        State.Disconnected: [],
        State.Connecting: [Start()],
        State.Registering: [Start(), ChannelReady(1)],
        State.Synced: [Start(), ChannelReady(1), Registered(1)],
        State.Processing: [Start(), ChannelReady(1), Registered(1), MessageReceived(1, "m")],
        State.Backoff: [Start(), ConnectFailed(1, "refused")],
    }[state]
    for event in path:
        core.handle(event)
    assert core.state is state
    return core


@pytest.mark.parametrize("state", list(State))
def test_stop_from_any_state_ends_in_disconnected(state: State) -> None:
    core = _drive_to(state)
    effects = core.handle(Stop())
    assert core.state is State.Disconnected
    assert effects[-1] == Stopped()
    if state is State.Backoff:
        assert CancelTimer(1) in effects
    if state in (State.Connecting, State.Registering, State.Synced, State.Processing):
        assert CloseSession(1, "agent stopping") in effects


def test_delays_grow_are_capped_and_reset_once_synced() -> None:
    core = make_core(initial=1.0, maximum=5.0)
    core.handle(Start())
    delays = []
    for session in range(1, 7):
        effects = core.handle(ConnectFailed(session, "refused"))
        timer = effects[-1]
        assert isinstance(timer, StartTimer)
        delays.append(timer.delay)
        core.handle(RetryTimerFired(timer.token))
    assert delays[0] == 1.0
    bases = [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]  # doubling from the first wait, capped at 5
    for delay, base in zip(delays, bases):
        assert 1.0 <= delay <= base  # full jitter between the first wait and the base
    core.handle(ChannelReady(7))
    core.handle(Registered(7))
    timer = core.handle(StreamBroken(7, "eof"))[-1]
    assert isinstance(timer, StartTimer) and timer.delay == 1.0


def test_an_event_the_table_does_not_take_is_an_explicit_error() -> None:
    core = make_core()
    core.handle(Start())
    with pytest.raises(InvalidTransition, match="Registered is not valid in state Connecting"):
        core.handle(Registered(1))


def test_start_while_running_and_certificate_change_while_disconnected_are_tolerated() -> None:
    core = make_core()
    assert isinstance(core.handle(CertificatesChanged())[0], Ignored)
    core.handle(Start())
    assert isinstance(core.handle(Start())[0], Ignored)
    assert core.state is State.Connecting

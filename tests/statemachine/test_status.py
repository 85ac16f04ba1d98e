"""The recover/terminate policy on gRPC status codes: every code of grpc.StatusCode, by name and
by number, and what the core does with each. The policy module itself never imports grpc."""

from __future__ import annotations

import random
from typing import Dict, Tuple

import grpc
import pytest

from aos_sm.agent.sdnotify import session_status
from aos_sm.statemachine import (
    STATUS_CODES,
    Pace,
    Problem,
    RateLimiter,
    SessionCore,
    State,
    recovery_for,
    should_recover,
)
from aos_sm.statemachine.effects import CloseSession, StartTimer
from aos_sm.statemachine.events import ChannelReady, ConnectFailed, Registered, Start, StreamBroken
from aos_sm.statemachine.status import describe

B, CAP = Pace.BACKOFF, Pace.CAP
T, O, C = Problem.TRANSIENT, Problem.OVERLOAD, Problem.CONFIGURATION

# The designed verdict for every code: written out, so a change to the policy is a visible diff.
EXPECTED: Dict[str, Tuple[Pace, Problem]] = {
    "OK": (B, T),
    "CANCELLED": (B, T),
    "UNKNOWN": (B, T),
    "INVALID_ARGUMENT": (CAP, C),
    "DEADLINE_EXCEEDED": (B, T),
    "NOT_FOUND": (CAP, C),
    "ALREADY_EXISTS": (B, T),
    "PERMISSION_DENIED": (CAP, C),
    "RESOURCE_EXHAUSTED": (CAP, O),
    "FAILED_PRECONDITION": (CAP, C),
    "ABORTED": (B, T),
    "OUT_OF_RANGE": (CAP, C),
    "UNIMPLEMENTED": (CAP, C),
    "INTERNAL": (B, T),
    "UNAVAILABLE": (B, T),
    "DATA_LOSS": (B, T),
    "UNAUTHENTICATED": (CAP, C),
}

ALL_CODES = list(grpc.StatusCode)


def test_the_table_names_and_numbers_every_grpc_status_code() -> None:
    assert {code.name: code.value[0] for code in ALL_CODES} == STATUS_CODES
    assert set(EXPECTED) == set(STATUS_CODES)


@pytest.mark.parametrize("code", ALL_CODES, ids=lambda code: code.name)
def test_each_code_has_its_pace_and_problem_by_name_and_by_number(code: grpc.StatusCode) -> None:
    by_name, by_number = recovery_for(code.name), recovery_for(code.value[0])
    assert by_name == by_number
    assert (by_name.code, by_name.number) == (code.name, code.value[0])
    assert (by_name.pace, by_name.problem) == EXPECTED[code.name]
    assert should_recover(code.name) is (by_name.pace is Pace.BACKOFF)
    assert by_name.summary
    line = describe(by_name, "peer says no")
    assert line.startswith("configuration problem: " if by_name.configuration_problem else code.name)
    assert code.name in line and line.endswith("(peer says no)")
    if by_name.configuration_problem:
        assert by_name.hint and by_name.hint in line


@pytest.mark.parametrize("code", ALL_CODES, ids=lambda code: code.name)
def test_each_code_reads_in_systemd_status(code: grpc.StatusCode) -> None:
    text = session_status("Backoff", "cm:8093", recovery_for(code.name))
    assert "cm:8093" in text and code.name in text
    assert ("configuration problem" in text) is (EXPECTED[code.name][1] is C)
    assert "\n" not in text


@pytest.mark.parametrize("code", ALL_CODES, ids=lambda code: code.name)
@pytest.mark.parametrize("broken", [True, False], ids=["stream-broken", "connect-failed"])
def test_the_core_retries_every_code_at_its_pace(code: grpc.StatusCode, broken: bool) -> None:
    core = SessionCore(reconnect_timeout=1.0, reconnect_max_timeout=8.0, random=random.Random(3).random)
    core.handle(Start())
    if broken:
        core.handle(ChannelReady(1))
        core.handle(Registered(1))
        failure = core.handle(StreamBroken(1, "cut", code.name))
    else:
        failure = core.handle(ConnectFailed(1, "cut", code.name))
    assert core.state is State.Backoff
    close, timer = failure
    assert close == CloseSession(1, "cut", recovery_for(code.name))
    assert isinstance(timer, StartTimer)
    if EXPECTED[code.name][0] is CAP:
        assert 8.0 * 0.8 <= timer.delay <= 8.0
    else:
        assert timer.delay == 1.0  # the backoff's first step: cmReconnectTimeout
    assert core.last_failure == recovery_for(code.name)


def test_a_configuration_problem_does_not_advance_the_backoff_and_a_sync_clears_it() -> None:
    core = SessionCore(reconnect_timeout=1.0, reconnect_max_timeout=8.0, random=random.Random(3).random)
    core.handle(Start())
    core.handle(ConnectFailed(1, "bad cert", "UNAUTHENTICATED"))
    core.handle(core_timer_fired(core))
    (_close, timer) = core.handle(ConnectFailed(2, "refused"))
    assert isinstance(timer, StartTimer) and timer.delay == 1.0
    core.handle(core_timer_fired(core))
    core.handle(ChannelReady(3))
    core.handle(Registered(3))
    assert core.last_failure is None


def core_timer_fired(core: SessionCore) -> object:
    from aos_sm.statemachine.events import RetryTimerFired

    return RetryTimerFired(core._active_timer or 0)


def test_an_unknown_code_counts_as_unknown() -> None:
    assert recovery_for("NO_SUCH_CODE").code == "UNKNOWN"
    assert recovery_for(99).code == "UNKNOWN"


def test_the_rate_limiter_passes_one_per_interval_and_counts_the_rest() -> None:
    limiter = RateLimiter(60.0)
    assert limiter.allow("a", 0.0) == (True, 0)
    assert limiter.allow("a", 1.0) == (False, 0)
    assert limiter.allow("b", 1.0) == (True, 0)
    assert limiter.allow("a", 59.9) == (False, 0)
    assert limiter.allow("a", 60.0) == (True, 2)
    assert limiter.allow("a", 61.0) == (False, 0)
    with pytest.raises(ValueError):
        RateLimiter(-1.0)

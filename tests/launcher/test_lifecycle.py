"""The instance life cycle core, driven by events only: no runc, no clock, no sleeps."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Callable, Dict, List

import pytest

from aos_sm.agent.launcher import lifecycle as lc
from aos_sm.agent.launcher.lifecycle import (EDGES, TOLERATED, WIRE_STATE, Adopted, Attach, CancelTimer, Create, Detach,
                                             ExitStatus, Exited, Faulted, Forget, Halt, Ignored, ImageReady,
                                             InstanceLife, InvalidTransition, LaunchFailed, OfflineClock,
                                             Phase, Problem, ProcessRunning, Pull, Reap, Report,
                                             RestartTimerFired, RunPolicy, StartRequested, StartTimer,
                                             StartWindowPassed, StopFailed, Stopped, StopRequested,
                                             TtlExpired, Unwatch, Watch)
from aos_sm.agent.launcher.lifecycle_diagram import render_dot, render_mermaid

P = Phase
POLICY = RunPolicy(start_interval=5.0, start_burst=3, restart_interval=1.0)
CRASH = ExitStatus(1, None, "exited with code 1")
OOPS = Problem(1, "oops")


def to(phase: Phase, policy: RunPolicy = POLICY) -> InstanceLife:
    """A life in ``phase``, reached through events only."""
    life = InstanceLife()
    if phase is P.Idle:
        return life
    if phase is P.Active and policy is POLICY:
        life.handle(Adopted(policy, 0.0))
        return life
    if phase in (P.Inactive, P.Stopping):
        life.handle(StopRequested(forget=False))
        if phase is P.Inactive:
            life.handle(Stopped(life.run))
        return life
    if phase is P.Failed:
        life.handle(Faulted(OOPS))
        return life
    life.handle(StartRequested())
    if phase is P.Pulling:
        return life
    life.handle(ImageReady(life.run, policy))
    if phase is P.Creating:
        return life
    life.handle(ProcessRunning(life.run, 0.0))
    if phase is P.Confirming:
        return life
    if phase is P.Active:
        life.handle(StartWindowPassed(life.run))
        return life
    assert phase is P.Backoff
    life.handle(Exited(life.run, 0.1, CRASH))
    return life


def event_named(name: str, life: InstanceLife) -> lc.Event:
    """An event of each kind, for the life's current run."""
    run = life.run
    events: Dict[str, Callable[[], lc.Event]] = {
        "StartRequested": StartRequested, "ImageReady": lambda: ImageReady(run, POLICY),
        "ProcessRunning": lambda: ProcessRunning(run, 1.0), "StartWindowPassed": lambda: StartWindowPassed(run),
        "LaunchFailed": lambda: LaunchFailed(run, OOPS), "Exited": lambda: Exited(run, 1.0, CRASH),
        "RestartTimerFired": lambda: RestartTimerFired(run), "StopRequested": lambda: StopRequested(forget=True),
        "TtlExpired": TtlExpired, "Stopped": lambda: Stopped(run), "StopFailed": lambda: StopFailed(run, OOPS),
        "Adopted": lambda: Adopted(POLICY, 0.0), "Faulted": lambda: Faulted(OOPS),
    }
    return events[name]()


EVENT_NAMES = sorted({edge.event for edge in EDGES})


def test_every_event_class_has_an_edge_and_every_edge_an_event_class() -> None:
    assert set(EVENT_NAMES) == {cls.__name__ for cls in lc.Event.__args__}  # type: ignore[attr-defined]


@pytest.mark.parametrize("edge,source", [(e, s) for e in EDGES for s in e.sources],
                         ids=lambda v: v.event if isinstance(v, lc.Edge) else v.name)
def test_every_edge_of_the_table(edge: lc.Edge, source: Phase) -> None:
    # A burst of 1 exhausts it on the first exit; otherwise there is room.
    policy = RunPolicy(start_burst=1) if edge.guard == "burst_exhausted" else POLICY
    life = to(source, policy)
    assert life.phase is source
    effects = life.handle(event_named(edge.event, life))
    assert life.phase is edge.dest
    assert not any(isinstance(effect, Ignored) for effect in effects)


@pytest.mark.parametrize("phase", list(Phase), ids=lambda p: p.name)
def test_every_event_a_state_does_not_take_is_an_explicit_error(phase: Phase) -> None:
    accepted = {edge.event for edge in EDGES if phase in edge.sources}
    for name in EVENT_NAMES:
        if name in accepted:
            continue
        life = to(phase)
        if (name, phase) in TOLERATED:
            assert isinstance(life.handle(event_named(name, life))[0], Ignored)
        else:
            with pytest.raises(InvalidTransition, match=f"{name} is not valid in state {phase.name}"):
                life.handle(event_named(name, life))
        assert life.phase is phase  # an illegal event changes nothing


def test_a_start_pulls_creates_opens_the_window_then_confirms() -> None:
    life = InstanceLife()
    assert life.handle(StartRequested()) == (Report(), Pull(1))
    assert life.wire_state == "activating"
    assert life.handle(ImageReady(1, POLICY)) == (Attach(1), Create(1))
    assert life.handle(ProcessRunning(1, 10.0)) == (Watch(), StartTimer(6.0, StartWindowPassed(1)))
    assert life.wire_state == "activating"  # not active before the window (1.2 x startInterval)
    assert life.handle(StartWindowPassed(1)) == (Report(),)
    assert (life.phase, life.wire_state, life.problem) == (P.Active, "active", None)


def test_a_crash_reaps_reports_failed_and_restarts_after_the_restart_interval() -> None:
    life = to(P.Active)
    killed = ExitStatus(None, 9, "killed by signal SIGKILL")
    effects = life.handle(Exited(life.run, 3.0, killed))
    assert effects == (CancelTimer(), Unwatch(), Reap(1, killed), Detach(1), Report(),
                       StartTimer(1.0, RestartTimerFired(1)))
    assert (life.wire_state, life.problem) == ("failed", Problem(2, "instance killed by signal SIGKILL", 9))
    assert life.handle(RestartTimerFired(1)) == (Report(), Attach(2), Create(2))
    assert (life.wire_state, life.problem) == ("activating", None)


def test_the_burst_limit_fails_it_with_the_last_exit_after_start_burst_starts_in_the_interval() -> None:
    life = to(P.Creating)
    now = 0.0
    for start in range(3):
        life.handle(ProcessRunning(life.run, now))
        life.handle(Exited(life.run, now + 0.1, ExitStatus(start + 10, None, f"exited with code {start + 10}")))
        now += 1.2
        if start < 2:
            assert life.phase is P.Backoff
            life.handle(RestartTimerFired(life.run))
    assert life.phase is P.Failed
    assert life.problem == Problem(2, "instance exited with code 12", 12)
    assert life.wire_state == "failed"


def test_starts_older_than_the_start_interval_do_not_count_against_the_burst() -> None:
    life = to(P.Creating)
    for at in (0.0, 10.0, 20.0, 30.0, 40.0):  # one crash every 10 s, startInterval 5 s
        life.handle(ProcessRunning(life.run, at))
        life.handle(Exited(life.run, at + 0.1, CRASH))
        assert life.phase is P.Backoff
        life.handle(RestartTimerFired(life.run))


def test_a_new_start_from_cm_begins_a_fresh_burst() -> None:
    life = to(P.Creating, RunPolicy(start_burst=1))
    life.handle(ProcessRunning(life.run, 0.0))
    life.handle(Exited(life.run, 0.1, CRASH))
    assert life.phase is P.Failed
    life.handle(StartRequested())
    life.handle(ImageReady(life.run, RunPolicy(start_burst=1)))
    life.handle(ProcessRunning(life.run, 0.2))
    assert life.phase is P.Confirming and life.problem is None


def test_events_of_an_older_run_are_ignored() -> None:
    life = to(P.Active)
    old = life.run
    life.handle(StopRequested(forget=False))
    (ignored,) = life.handle(Exited(old, 1.0, CRASH))  # the exit our own stop caused
    assert isinstance(ignored, Ignored) and "run" in ignored.reason
    assert life.phase is P.Stopping


def test_a_stop_halts_and_cm_stops_forget_ttl_stops_do_not() -> None:
    life = to(P.Active)
    assert life.handle(StopRequested(forget=True)) == (CancelTimer(), Unwatch(), Halt(2))
    assert life.handle(Stopped(2)) == (Detach(2), Report(), Forget())
    assert life.wire_state == "inactive"
    by_ttl = to(P.Active)
    by_ttl.handle(TtlExpired())
    assert by_ttl.handle(Stopped(by_ttl.run)) == (Detach(by_ttl.run), Report())
    assert (by_ttl.phase, by_ttl.wire_state) == (P.Inactive, "inactive")


def test_cm_stopping_what_a_ttl_stops_forgets_it_once_stopped() -> None:
    life = to(P.Active)
    life.handle(TtlExpired())
    assert life.handle(StopRequested(forget=True)) == ()
    assert life.handle(Stopped(life.run)) == (Detach(life.run), Report(), Forget())


def test_a_failed_stop_is_failed_with_its_problem() -> None:
    life = to(P.Stopping)
    life.handle(StopFailed(life.run, OOPS))
    assert (life.wire_state, life.problem) == ("failed", OOPS)


def test_the_ttl_stops_running_phases_and_is_ignored_once_down() -> None:
    for phase in (P.Pulling, P.Creating, P.Confirming, P.Active, P.Backoff):
        life = to(phase)
        effects = life.handle(TtlExpired())
        assert life.phase is P.Stopping and isinstance(effects[-1], Halt), phase
    for phase in (P.Stopping, P.Inactive, P.Failed):
        assert isinstance(to(phase).handle(TtlExpired())[0], Ignored)
    restored = InstanceLife()
    assert restored.handle(TtlExpired()) == (Report(),)
    assert restored.phase is P.Inactive  # never started


def test_the_offline_clock_starts_on_disconnect_keeps_its_start_and_resets_on_connect() -> None:
    clock = OfflineClock(None)
    assert clock.deadline(2.0) is None and not clock.expired(2.0, 1e9)
    away = clock.on_cloud(False, 100.0)
    assert away.since == 100.0
    assert away.on_cloud(False, 150.0) is away  # CM repeats DISCONNECTED: the clock keeps running
    assert away.deadline(2.0) == 102.0 and away.deadline(None) is None
    assert not away.expired(2.0, 101.9) and away.expired(2.0, 102.0)
    assert not away.expired(None, 1e9)  # no TTL: runs whatever the connection
    assert away.on_cloud(True, 200.0) == OfflineClock(None)


def test_wire_states_are_derived_for_every_phase_in_one_table() -> None:
    assert set(WIRE_STATE) == set(Phase)
    assert set(WIRE_STATE.values()) == {"activating", "active", "inactive", "failed"}


def test_a_bad_runner_failure_is_a_state() -> None:
    for phase in (P.Idle, P.Pulling, P.Creating, P.Stopping):
        life = to(phase)
        life.handle(Faulted(Problem(1, "launcher store: disk I/O error")))
        assert (life.phase, life.wire_state) == (P.Failed, "failed")


# --- purity and the diagram

FORBIDDEN = {"grpc", "os", "time", "threading", "asyncio", "subprocess", "psutil", "pyroute2",
             "socket", "signal", "pathlib", "io", "sqlite3", "shutil", "urllib", "concurrent"}
CORE = Path(lc.__file__)


def imported_roots(path: Path) -> set:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add("." * node.level + (node.module or "").split(".")[0])
    return roots


def test_the_core_and_its_diagram_import_nothing_that_does_io(tmp_path: Path) -> None:
    for path in (CORE, CORE.with_name("lifecycle_diagram.py")):
        roots = imported_roots(path)
        assert not roots & FORBIDDEN, path.name
        assert all(not root.startswith(".") or root in (".lifecycle",) for root in roots), roots
    bad = tmp_path / "bad.py"
    bad.write_text("import time\nfrom os import path\n")
    assert imported_roots(bad) & FORBIDDEN == {"time", "os"}


def test_the_diagram_has_one_arrow_per_source_and_dest_of_the_table() -> None:
    text = render_mermaid()
    pairs = {(src.name, edge.dest.name) for edge in EDGES for src in edge.sources}
    arrows: List[str] = [line for line in text.splitlines() if "-->" in line and "[*]" not in line]
    assert len(arrows) == len(pairs)
    assert "Confirming --> Failed: Exited (burst exhausted)" in text
    assert "Backoff --> Creating: RestartTimerFired" in text
    assert render_dot().startswith("digraph instance {")
    extra = EDGES + (lc.Edge("Poke", (P.Failed,), P.Active, "confirm"),)
    assert "Failed --> Active: Poke" in render_mermaid(extra) and "Poke" not in text

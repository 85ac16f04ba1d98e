"""The traffic period, pure: counter growth, restarts of counters, the UTC day roll, limits and
the stored form (NETWORK.md "Traffic accounting and limits")."""

from __future__ import annotations

import ast
import datetime
from pathlib import Path

from aos_sm.agent.network import traffic_period
from aos_sm.agent.network.traffic_period import (NODE, Bytes, Period, advance, forget, from_json,
                                                 limit_crossed, to_json, utc_day)

DAY1_NOON = datetime.datetime(2026, 11, 30, 12, 0, tzinfo=datetime.timezone.utc).timestamp()
DAY1_LAST_SECOND = datetime.datetime(2026, 11, 30, 23, 59, 59, tzinfo=datetime.timezone.utc).timestamp()
DAY2_FIRST_SECOND = DAY1_LAST_SECOND + 1


def test_the_day_is_the_utc_calendar_day() -> None:
    assert utc_day(DAY1_LAST_SECOND) == "2026-11-30"
    assert utc_day(DAY2_FIRST_SECOND) == "2026-12-01"


def test_growth_since_the_last_reading_adds_up_per_key_and_direction() -> None:
    period, rolled = advance(None, {NODE: Bytes(100, 10), "a": Bytes(5, 7)}, DAY1_NOON)
    assert not rolled
    period, _ = advance(period, {NODE: Bytes(150, 30), "a": Bytes(5, 17)}, DAY1_NOON + 35)
    assert period.total(NODE) == Bytes(150, 30)
    assert period.total("a") == Bytes(5, 17)
    assert period.total("unknown") == Bytes()


def test_a_counter_that_went_back_was_recreated_and_counts_from_zero() -> None:
    period, _ = advance(None, {"a": Bytes(1000, 1000)}, DAY1_NOON)
    period, _ = advance(period, {"a": Bytes(40, 1200)}, DAY1_NOON + 35)
    assert period.total("a") == Bytes(1040, 1200)


def test_a_forgotten_key_counts_its_next_counter_from_zero_and_keeps_its_total() -> None:
    period, _ = advance(None, {"a": Bytes(1000, 0)}, DAY1_NOON)
    period = forget(period, "a")
    period, _ = advance(period, {}, DAY1_NOON + 10)
    assert period.total("a") == Bytes(1000, 0)  # removed instance: the day's bytes are kept
    period, _ = advance(period, {"a": Bytes(2000, 0)}, DAY1_NOON + 20)  # re-created, grew to 2000
    assert period.total("a") == Bytes(3000, 0)


def test_the_totals_restart_at_the_day_change_and_only_then() -> None:
    period, _ = advance(None, {"a": Bytes(0, 0)}, DAY1_NOON)
    period, rolled = advance(period, {"a": Bytes(500, 50)}, DAY1_LAST_SECOND)
    assert not rolled and period.total("a") == Bytes(500, 50)
    period, rolled = advance(period, {"a": Bytes(600, 60)}, DAY2_FIRST_SECOND)
    assert rolled
    assert period.day == "2026-12-01"
    assert period.total("a") == Bytes(0, 0)
    period, rolled = advance(period, {"a": Bytes(700, 90)}, DAY2_FIRST_SECOND + 35)
    assert not rolled and period.total("a") == Bytes(100, 30)


def test_a_restart_the_next_day_rolls_over_the_stored_period() -> None:
    stored = from_json(to_json(advance(None, {"a": Bytes(9, 9)}, DAY1_NOON)[0]))
    period, rolled = advance(stored, {"a": Bytes(10, 10)}, DAY2_FIRST_SECOND + 3600)
    assert rolled and period.total("a") == Bytes()


def test_a_limit_is_crossed_at_exactly_the_limit() -> None:
    assert not limit_crossed(999, 1000)
    assert limit_crossed(1000, 1000)
    assert not limit_crossed(10**12, None)


def test_the_stored_form_round_trips_and_a_bad_file_gives_a_fresh_period() -> None:
    period = Period("2026-11-30", {NODE: Bytes(1, 2), "a": Bytes(3, 4)}, {"a": Bytes(5, 6)})
    assert from_json(to_json(period)) == period
    for bad in (None, [], {"day": 5}, {"day": "30.11.2026"}, {"day": "2026-11-30", "totals": []},
                {"day": "2026-11-30", "totals": {"a": ["x", 1]}}):
        assert from_json(bad) is None
    # A negative count is dropped, the rest kept.
    assert from_json({"day": "2026-11-30", "totals": {"a": [-1, 2], "b": [1, 2]}}) == \
        Period("2026-11-30", {"b": Bytes(1, 2)}, {})


def test_the_period_module_is_pure() -> None:
    tree = ast.parse(Path(traffic_period.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.level == 0}
    assert not imported & {"os", "time", "threading", "subprocess", "socket", "pyroute2", "json"}
    assert "now()" not in Path(traffic_period.__file__).read_text()

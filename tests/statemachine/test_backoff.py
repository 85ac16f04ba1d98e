from __future__ import annotations

import itertools
import random

import pytest

from aos_sm.statemachine import backoff_delays


def take(n: int, **kwargs: float) -> list[float]:
    params = {"initial": 1.0, "maximum": 60.0, **kwargs}
    return list(
        itertools.islice(
            backoff_delays(params["initial"], params["maximum"], random.Random(1).random), n
        )
    )


def test_first_delay_is_exactly_the_reconnect_timeout() -> None:
    assert take(1, initial=10.0)[0] == 10.0


def test_delays_grow_exponentially_within_the_jitter_band() -> None:
    delays = take(6, initial=1.0, maximum=1000.0)
    for step, delay in enumerate(delays[1:], start=1):
        base = 2.0**step
        assert 0.8 * base <= delay <= base


def test_delays_are_jittered() -> None:
    delays = take(30, initial=1.0, maximum=4.0)[5:]
    assert len(set(delays)) > 20
    assert min(delays) < 4.0


def test_delays_never_exceed_the_cap() -> None:
    assert max(take(50, initial=10.0, maximum=60.0)) <= 60.0
    assert take(1, initial=90.0, maximum=60.0) == [60.0]


def test_a_zero_initial_delay_still_grows() -> None:
    delays = take(5, initial=0.0, maximum=1.0)
    assert delays[0] == 0.0 and delays[-1] > 0.0


def test_fixed_random_source_gives_repeatable_delays() -> None:
    assert take(10) == take(10)


@pytest.mark.parametrize("kwargs", [{"initial": -1.0}, {"maximum": -1.0}])
def test_negative_delays_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        take(1, **kwargs)

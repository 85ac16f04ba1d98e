from __future__ import annotations

import itertools
import random
from typing import Callable, List

import pytest

from aos_sm.statemachine import backoff_delays


def take(n: int, initial: float = 0.5, maximum: float = 10.0,
         source: Callable[[], float] = random.Random(1).random) -> List[float]:
    return list(itertools.islice(backoff_delays(initial, maximum, source), n))


def test_the_first_delay_is_the_short_first_wait() -> None:
    assert take(1, initial=0.5, maximum=10.0)[0] == 0.5


def test_the_cap_holds_for_any_number_of_failures() -> None:
    """cmReconnectTimeout is the cap: after 10 000 failures no wait exceeds it, and the waits
    reach it (a random source that always says "the top" hits the cap exactly)."""
    for seed in range(5):
        delays = take(10_000, initial=0.5, maximum=10.0, source=random.Random(seed).random)
        assert max(delays) <= 10.0
        assert min(delays) >= 0.5
    top = take(10_000, initial=0.5, maximum=10.0, source=lambda: 1.0)
    assert top[5:] == [10.0] * (10_000 - 5)
    assert all(delay <= 10.0 for delay in top)


@pytest.mark.parametrize("maximum", [0.0, 0.1, 1.0, 10.0, 60.0])
def test_the_cap_holds_for_every_cap_even_below_the_first_wait(maximum: float) -> None:
    delays = take(200, initial=0.5, maximum=maximum)
    assert max(delays) <= maximum
    assert delays[0] == min(0.5, maximum)


def test_bases_double_from_the_first_wait_up_to_the_cap() -> None:
    """With the random source at its top every delay is its base: 0.5, 1, 2, 4, 8, then 10."""
    assert take(8, initial=0.5, maximum=10.0, source=lambda: 1.0) == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


def test_full_jitter_spreads_delays_between_the_first_wait_and_the_base() -> None:
    delays = take(300, initial=0.5, maximum=10.0)[10:]
    assert min(delays) < 2.0 and max(delays) > 8.0  # the whole band is used, not a narrow top slice
    assert len(set(delays)) > 250
    assert take(5, source=lambda: 0.0) == [0.5] * 5  # the bottom of the band is the first wait


def test_a_zero_first_wait_still_grows() -> None:
    delays = take(5, initial=0.0, maximum=1.0, source=lambda: 1.0)
    assert delays[0] == 0.0 and delays[-1] > 0.0


def test_fixed_random_source_gives_repeatable_delays() -> None:
    assert take(10, source=random.Random(3).random) == take(10, source=random.Random(3).random)


@pytest.mark.parametrize("initial, maximum", [(-1.0, 1.0), (1.0, -1.0)])
def test_negative_delays_are_refused(initial: float, maximum: float) -> None:
    with pytest.raises(ValueError):
        take(1, initial=initial, maximum=maximum)

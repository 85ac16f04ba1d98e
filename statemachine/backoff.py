"""Reconnect delays: a pure, jittered, capped generator that tests iterate.

The reference SM waits a fixed ``cmReconnectTimeout`` after every failure. CM marks a node in
error when its SM is not registered within 1 minute of CM's start (PROTOCOL.md "Session"), and a
one-minute cap was measured to re-register 33 s after CM came back. So the wait starts short
(``initial``), doubles per failure, and never exceeds ``maximum`` (the agent passes
``cmReconnectTimeout``): the node is back within ``maximum`` of CM's return after an outage of
any length.

Each delay is "full jitter" (AWS Architecture Blog, "Exponential Backoff And Jitter", 2015) over
[initial, base]: uniform between the first wait and the current exponential base, so a fleet of
nodes that lost the same CM does not reconnect in lockstep, while the floor keeps a node whose
connects fail at once from spinning (python-api-core's ``bidi.py`` reopened without any backoff
and flooded logs).
"""

from __future__ import annotations

from typing import Callable, Iterator


def backoff_delays(
    initial: float,
    maximum: float,
    random: Callable[[], float],
    *,
    multiplier: float = 2.0,
) -> Iterator[float]:
    """Yield seconds to wait before each retry: ``min(initial, maximum)`` first, then the n-th
    delay uniform in [floor, min(maximum, initial * multiplier**n)]. Never above ``maximum``.

    ``random`` returns a float in [0, 1) (``random.Random().random``), injected for tests.
    """
    if initial < 0 or maximum < 0:
        raise ValueError("backoff delays cannot be negative")
    if multiplier < 1:
        raise ValueError("the multiplier must be at least 1")
    floor = min(initial, maximum)
    base = floor
    yield floor
    while True:
        # max(..., 1e-3): a zero first wait still grows; min(...) before multiplying again keeps
        # the base finite after any number of failures.
        base = min(max(base, 1e-3) * multiplier, maximum)
        yield min(maximum, floor + (base - floor) * random())

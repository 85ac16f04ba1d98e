"""Reconnect delays: a pure, jittered, capped generator that tests iterate.

The reference SM waits a fixed ``cmReconnectTimeout`` after every failure. We start with exactly
that wait, then double it up to ``maximum``. Each delay after the first is jittered downwards by
up to ``jitter`` of itself, so a fleet of nodes that lost the same CM does not reconnect in
lockstep (the lesson of python-api-core's ``bidi.py``, which reopened without any backoff), and
no delay ever exceeds the cap.
"""

from __future__ import annotations

from typing import Callable, Iterator


def backoff_delays(
    initial: float,
    maximum: float,
    random: Callable[[], float],
    *,
    multiplier: float = 2.0,
    jitter: float = 0.2,
) -> Iterator[float]:
    """Yield seconds to wait before each retry: ``initial``, then jittered growth to ``maximum``.

    ``random`` returns a float in [0, 1) (``random.Random().random``), injected for tests.
    """
    if initial < 0 or maximum < 0:
        raise ValueError("backoff delays cannot be negative")
    if not 0 <= jitter < 1:
        raise ValueError("jitter must be in [0, 1)")
    base = min(initial, maximum)
    yield base
    while True:
        base = min(max(base, 1e-3) * multiplier, maximum)
        yield base * (1.0 - jitter * random())

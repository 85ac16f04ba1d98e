"""A pure rate limiter: the caller passes the time in, so tests need no clock and no sleep.

Used for what a hostile or broken peer could otherwise repeat without bound: CoreAlerts about
undecodable frames, and the configuration-problem log line of a connect that keeps failing.
"""

from __future__ import annotations

from typing import Dict, Hashable, Tuple


class RateLimiter:
    """At most one pass per ``interval`` seconds per key; counts what it held back."""

    def __init__(self, interval: float) -> None:
        if interval < 0:
            raise ValueError("interval cannot be negative")
        self._interval = interval
        self._last: Dict[Hashable, float] = {}
        self._held: Dict[Hashable, int] = {}

    def allow(self, key: Hashable, now: float) -> Tuple[bool, int]:
        """``(passes, held back since the last pass)``; the first call for a key always passes."""
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._held[key] = self._held.get(key, 0) + 1
            return False, 0
        self._last[key] = now
        return True, self._held.pop(key, 0)

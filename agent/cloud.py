"""The cloud connection status CM relays (PROTOCOL.md, "Session").

CM repeats ConnectionStatus on every cloud change without de-duplicating; listeners hear only
real changes, and always the first value. Losing the CM stream does not change the cloud status.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, List, Optional

log = logging.getLogger(__name__)

Listener = Callable[[bool], None]


class CloudConnection:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connected: Optional[bool] = None
        self._listeners: List[Listener] = []

    @property
    def connected(self) -> Optional[bool]:
        """The last status CM reported; None before the first report."""
        return self._connected

    def add_listener(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def update(self, connected: bool) -> bool:
        """Record a status; notify listeners if it changed. Returns whether they were notified."""
        with self._lock:
            if self._connected is connected:
                return False
            self._connected = connected
            listeners = list(self._listeners)
        log.info("cloud %s", "connected" if connected else "disconnected")
        for listener in listeners:
            try:
                listener(connected)
            except Exception:  # a faulty listener must not stop the others or the stream
                log.exception("cloud connection listener %r failed", listener)
        return True

"""The typed-command loop the simulators (`cm-sim`, `iam-sim`) share."""

from __future__ import annotations

import sys
import threading
from typing import Callable


def read_commands(handle: Callable[[str], None], stop: threading.Event, *, name: str) -> threading.Thread:
    """Read stdin on a daemon thread, handing each non-empty stripped line to ``handle``.

    ``quit`` or ``exit`` ends the reading. So does the end of input; from a terminal that also
    sets ``stop`` (the person is done), while a pipe that ends (a script, ``</dev/null``) leaves
    the simulator running until a signal."""

    def loop() -> None:
        for raw in sys.stdin:
            line = raw.strip()
            if line in ("quit", "exit"):
                break
            if line:
                handle(line)
        if sys.stdin.isatty():
            stop.set()

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    return thread

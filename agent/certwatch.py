"""Notice renewed certificate files on disk.

Certificates are renewed by replacing the files (IAM writes a new file and renames it over the
old one), so the watcher compares each file's identity (device, inode), size and mtime; any
change, including a file appearing or vanishing, counts. Polling once a second keeps the
reconnect within the 5 s the gateway issue asks for, with no inotify dependency on small boards.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

log = logging.getLogger(__name__)

Signature = Optional[Tuple[int, int, int, int]]


def file_signature(path: Path) -> Signature:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


class CertificateWatcher:
    def __init__(self, paths: Sequence[Path], *, on_change: Callable[[], None], interval: float = 1.0) -> None:
        self._paths = tuple(paths)
        self._on_change = on_change
        self._interval = interval
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._seen: Dict[Path, Signature] = {}

    def start(self) -> None:
        if not self._paths:
            return
        self._seen = {path: file_signature(path) for path in self._paths}
        self._thread = threading.Thread(target=self._run, name="sm-certwatch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def check(self) -> bool:
        """Compare the files with what was seen last; True (and the callback) on any change."""
        current = {path: file_signature(path) for path in self._paths}
        changed = [str(path) for path in self._paths if current[path] != self._seen.get(path)]
        self._seen = current
        if changed:
            log.info("certificate files changed: %s", ", ".join(changed))
            self._on_change()
        return bool(changed)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.check()
            except Exception:  # never let the watcher die silently: the next tick tries again
                log.exception("certificate watcher failed")

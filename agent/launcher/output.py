"""An instance's output, recorded in the format of ``agent/instancelog.py``, and its exit.

The container's stdout and stderr are one FIFO that the container holds open read-write. Why a
FIFO held that way and not a plain pipe: when the agent dies (SIGKILL, a crash, an upgrade) the
container still has a reader on its own output, so its writes never raise SIGPIPE; they fill the
FIFO's buffer (64 KiB on Linux, pipe(7)) and then block until the agent is back, reopens the FIFO
by name and drains it. A plain pipe would kill every instance the first time it printed after the
agent went away. When every process of the container has exited the reader sees end of file.

The exit status is known when the container's process is the agent's child: the launcher makes
the agent a child subreaper (prctl(2) PR_SET_CHILD_SUBREAPER), so once ``runc run -d`` returns,
the container's first process is re-parented to the agent and ``waitpid`` reports how it ended.
A container adopted after an agent restart is not our child: its end is seen, its code is not.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

from ..instancelog import format_line
from .lifecycle import ExitStatus

log = logging.getLogger(__name__)

_PR_SET_CHILD_SUBREAPER = 36  # include/uapi/linux/prctl.h
_MAX_LINE = 64 * 1024


def set_subreaper(enabled: bool) -> bool:
    """Make orphaned descendants (container processes) children of this process, or stop doing so;
    False if refused. The flag is process-wide: a launcher turns it off again when it stops, so a
    process that hosts a launcher only for a while (the test suite) does not go on collecting
    zombies of unrelated daemons it starts later."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, int(enabled), 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def open_output(fifo: Path) -> tuple[int, int]:
    """(reader fd for the agent, read-write fd for the container) of ``fifo``, created if missing."""
    if not fifo.exists():
        os.mkfifo(fifo, 0o600)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    os.set_blocking(reader, True)
    writer = os.open(fifo, os.O_RDWR | os.O_CLOEXEC)
    return reader, writer


def reopen_output(fifo: Path) -> Optional[int]:
    """The agent's reader of a FIFO a running (adopted) container writes to, or None if it is gone."""
    try:
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    os.set_blocking(reader, True)
    return reader


def describe_exit(status: Optional[int]) -> str:
    """A wait status in words (``exit code 3``, ``killed by signal SIGSEGV``)."""
    if status is None:
        return "exited (code unknown: the instance was adopted after an agent restart)"
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        with contextlib.suppress(ValueError):
            return f"killed by signal {signal.Signals(number).name}"
        return f"killed by signal {number}"
    return f"exited with code {os.WEXITSTATUS(status)}"


def exit_status(status: Optional[int]) -> ExitStatus:
    """A wait status as the life cycle takes it: the exit code, or the (positive) signal number."""
    if status is None:
        return ExitStatus(None, None, describe_exit(status))
    if os.WIFSIGNALED(status):
        return ExitStatus(None, os.WTERMSIG(status), describe_exit(status))
    return ExitStatus(os.WEXITSTATUS(status), None, describe_exit(status))


ExitCallback = Callable[[Optional[int], datetime], None]


def record_output(reader: int, log_path: Path, pid: int, on_exit: ExitCallback,
                  clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> threading.Thread:
    """Start a thread that appends the output read from ``reader`` to ``log_path`` until end of
    file, reaps ``pid`` if it is our child, and calls ``on_exit(wait status or None, when)``."""

    def run() -> None:
        try:
            with open(log_path, "ab") as out:
                pending = b""
                while True:
                    chunk = os.read(reader, 65536)
                    if not chunk:
                        break
                    pending += chunk
                    lines = pending.split(b"\n")
                    pending = lines.pop()
                    if len(pending) > _MAX_LINE:
                        lines.append(pending)
                        pending = b""
                    stamp = clock()
                    out.write(b"".join(format_line(stamp, line) for line in lines))
                    out.flush()
                if pending:
                    out.write(format_line(clock(), pending))
        except OSError as err:
            log.error("recording output to %s failed: %s", log_path, err)
        finally:
            os.close(reader)
        status: Optional[int] = None
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            status = None
        on_exit(status, clock())

    thread = threading.Thread(target=run, name=f"instance-output-{pid}", daemon=True)
    thread.start()
    return thread

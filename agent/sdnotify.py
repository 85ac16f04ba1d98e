"""systemd's notify protocol and journald-friendly logging, without libsystemd.

The protocol is one datagram of ``KEY=value`` lines to the AF_UNIX socket named by
``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace). Outside systemd the
variable is unset and every call is a no-op, so ``aos-sm run`` behaves the same on a
BusyBox-init image and in a terminal.

The watchdog ping is sent *through the gateway's event pump* (``Gateway.in_loop``), never
straight from a timer: a handler wedged under the gateway lock then stops the pings, and
systemd restarts the agent after ``WatchdogSec``. A timer thread that pinged on its own would
keep a hung agent alive forever.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
from typing import Callable, Dict, Mapping, Optional

from aos_sm.statemachine import Recovery

log = logging.getLogger(__name__)

NOTIFY_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def socket_address(value: str) -> Optional[str]:
    """``$NOTIFY_SOCKET`` as a Python AF_UNIX address: ``@name`` is the abstract ``\\0name``."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # vsock or garbage: not ours to handle


def watchdog_interval(environ: Mapping[str, str], pid: int) -> Optional[float]:
    """Seconds between pings (half of ``WATCHDOG_USEC``, as sd_watchdog_enabled advises), or
    None when the watchdog is off or meant for another process (``WATCHDOG_PID``)."""
    owner = environ.get("WATCHDOG_PID")
    if owner is not None and owner.strip() != str(pid):
        return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2 / 1_000_000 if usec > 0 else None


class Notifier:
    """Sends state lines to systemd; never raises (a missing systemd must not stop the agent)."""

    def __init__(self, address: Optional[str]) -> None:
        self._address = address
        self._sock: Optional[socket.socket] = None
        self._lock = threading.Lock()
        self._warned = False
        if address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # Never block a caller (the watchdog ping runs under the gateway lock).
            self._sock.setblocking(False)

    @classmethod
    def from_environment(cls, environ: Optional[Mapping[str, str]] = None) -> "Notifier":
        env = os.environ if environ is None else environ
        value = env.get("NOTIFY_SOCKET", "")
        return cls(socket_address(value) if value else None)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *lines: str) -> bool:
        if self._sock is None or self._address is None:
            return False
        payload = "\n".join(line.replace("\n", " ") for line in lines).encode()
        try:
            with self._lock:
                self._sock.sendto(payload, self._address)
        except OSError as err:
            if not self._warned:  # once: a gone systemd would otherwise flood the log
                log.warning("cannot notify systemd at %r: %s", self._address.replace("\0", "@"), err)
                self._warned = True
            return False
        return True

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


InLoop = Callable[[Callable[[], None]], None]


class Watchdog:
    """Every ``interval`` seconds, asks the event pump to ping systemd.

    ``in_loop`` runs a callable on the pump (under its lock); while the pump is wedged the
    request blocks and no ping goes out, which is what lets systemd notice."""

    def __init__(self, notifier: Notifier, interval: float, in_loop: InLoop) -> None:
        self._notifier = notifier
        self._interval = interval
        self._in_loop = in_loop
        self._stop = threading.Event()
        self._stopping = threading.Lock()  # no ping can follow stop(): STOPPING=1 is the last word
        self._thread = threading.Thread(target=self._run, name="sd-watchdog", daemon=True)

    def start(self) -> "Watchdog":
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._stopping:
            self._stop.set()

    def _ping(self) -> None:
        with self._stopping:
            if not self._stop.is_set():
                self._notifier.notify("WATCHDOG=1")

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._in_loop(self._ping)


def take_notify_environment() -> Dict[str, str]:
    """Read and remove the notify variables, as sd_notify(unset_environment=1) does: OCI
    runtimes started by the agent would otherwise act on them (runc proxies NOTIFY_SOCKET)."""
    return {name: os.environ.pop(name) for name in NOTIFY_VARIABLES if name in os.environ}


_STATUS = {
    "Disconnected": "stopped",
    "Connecting": "connecting to CM at {target}",
    "Registering": "registering with CM at {target}",
    "Synced": "registered with CM at {target}",
    "Processing": "registered with CM at {target}",
    "Backoff": "CM at {target} unreachable, retrying",
}


def session_status(state: str, target: str, problem: Optional[Recovery] = None) -> str:
    """The STATUS= line for a session state (Processing reads as Synced: no flicker per message).

    In Backoff, ``problem`` (the status policy's verdict on the last failure) says why: a
    configuration problem reads differently from a network cut, since only an operator fixes it."""
    if state == "Backoff" and problem is not None:
        if problem.configuration_problem:
            return (f"configuration problem: CM at {target} answered {problem.code} "
                    f"({problem.summary}); {problem.hint}; retrying slowly")
        return f"CM at {target} {problem.summary} ({problem.code}), retrying"
    return _STATUS.get(state, state).format(target=target)


# Journald-friendly logging.

_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def syslog_priority(levelno: int) -> int:
    for level, priority in _PRIORITIES:
        if levelno >= level:
            return priority
    return 7


def stderr_is_journal(environ: Optional[Mapping[str, str]] = None, stream_fd: Optional[int] = None) -> bool:
    """True when stderr is connected to journald: ``$JOURNAL_STREAM`` names its device:inode
    (checked, so a shell started from a service does not inherit the wrong format)."""
    env = os.environ if environ is None else environ
    value = env.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        stat = os.fstat(sys.stderr.fileno() if stream_fd is None else stream_fd)
    except (OSError, ValueError):
        return False
    return (stat.st_dev, stat.st_ino) == (int(device), int(inode))


class JournalFormatter(logging.Formatter):
    """``<N>name: message``: journald reads the sd-daemon priority prefix and adds the time."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        prefix = f"<{syslog_priority(record.levelno)}>"
        # Each line of a traceback is its own journal entry: keep the priority on all of them.
        return "\n".join(prefix + line for line in text.split("\n"))


class ServiceNotifications:
    """What ``aos-sm run`` tells systemd over its life; all no-ops outside a notify service."""

    def __init__(self, environ: Mapping[str, str], pid: int) -> None:
        self.notifier = Notifier.from_environment(environ)
        self.interval = watchdog_interval(environ, pid) if self.notifier.enabled else None
        self._watchdog: Optional[Watchdog] = None
        self._status = ""

    def status(self, text: str) -> None:
        if text != self._status:  # Synced <-> Processing on every CM message reads the same
            self._status = text
            self.notifier.status(text)

    def ready(self, in_loop: InLoop) -> None:
        """The configuration is loaded and the first connect has started."""
        self.notifier.notify("READY=1")
        if self.interval is not None:
            log.info("systemd watchdog: pinging every %.1fs from the event pump", self.interval)
            self._watchdog = Watchdog(self.notifier, self.interval, in_loop).start()

    def stopping(self) -> None:
        if self._watchdog is not None:
            self._watchdog.stop()
        self.notifier.notify("STOPPING=1", "STATUS=stopping")

"""A thin adapter over an OCI runtime's CLI (runc; crun takes the same commands).

Containers are started detached (``run -d``): the runtime exits once the container's process
runs, and that process inherits the stdout/stderr the launcher hands in. The runtime's own error
messages go to ``--log`` (JSON lines) so they do not mix with the instance's output, and are
quoted in the error raised.
"""

from __future__ import annotations

import json
import re
import logging
import subprocess
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import List, Optional

from ..errors import Failed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ContainerState:
    status: str  # "creating", "created", "running", "paused", "stopped"
    pid: int
    created: Optional[datetime] = None


def parse_created(text: object) -> Optional[datetime]:
    """runc's ``created`` (Go RFC 3339 with nanoseconds, ``2026-11-25T10:45:00.123456789Z``)."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", str(text))
    if match is None:
        return None
    whole, fraction, zone = match.groups()
    stamp = datetime.fromisoformat(f"{whole}.{(fraction or '0')[:6].ljust(6, '0')}"
                                   f"{'+00:00' if zone == 'Z' else zone}")
    return stamp.astimezone(timezone.utc)


class OciRuntimeError(Failed):
    """The runtime CLI failed; the message quotes what it said."""


class OciRuntime:
    def __init__(self, binary: str, state_root: Path, *, timeout: float = 60.0) -> None:
        self.binary = binary
        self.state_root = state_root
        self._timeout = timeout
        state_root.mkdir(parents=True, exist_ok=True)

    def _command(self, *args: str, log_file: Optional[Path] = None) -> List[str]:
        command = [self.binary, "--root", str(self.state_root)]
        if log_file is not None:
            command += ["--log", str(log_file), "--log-format", "json"]
        return command + list(args)

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        try:
            return _run_until(self._command(*args), self._timeout, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as err:
            raise OciRuntimeError(f"{Path(self.binary).name} {args[0]} failed: {err}") from err

    def run_detached(self, container_id: str, bundle: Path, output_fd: int) -> int:
        """Start the container with ``output_fd`` as its stdout and stderr; its host pid."""
        pid_file = bundle / "container.pid"
        log_file = bundle / "runtime.log"
        log_file.write_text("")
        command = self._command("run", "-d", "--bundle", str(bundle), "--pid-file", str(pid_file),
                                container_id, log_file=log_file)
        try:
            result = _run_until(command, self._timeout, stdout=output_fd, stderr=output_fd)
        except OSError as err:
            raise OciRuntimeError(f"{Path(self.binary).name} run failed: {err} (container {container_id})") from err
        if result.returncode != 0:
            raise OciRuntimeError(f"{Path(self.binary).name} run exited {result.returncode}: "
                                f"{_last_error(log_file)} (container {container_id})")
        try:
            return int(pid_file.read_text().strip())
        except (OSError, ValueError) as err:
            raise OciRuntimeError(f"{Path(self.binary).name} run left no pid file: {err} (container {container_id})") from err

    def state(self, container_id: str) -> Optional[ContainerState]:
        """The container's state, or None when the runtime does not know it."""
        result = self._run("state", container_id)
        if result.returncode != 0:
            return None
        try:
            data = json.loads(result.stdout)
            return ContainerState(str(data["status"]), int(data.get("pid") or 0), parse_created(data.get("created")))
        except (ValueError, KeyError, TypeError) as err:
            raise OciRuntimeError(f"{Path(self.binary).name} state unreadable: {err} (container {container_id})") from err

    def kill(self, container_id: str, signal: str = "KILL") -> None:
        result = self._run("kill", container_id, signal)
        if result.returncode != 0 and "not running" not in result.stderr and "does not exist" not in result.stderr:
            raise OciRuntimeError(f"{Path(self.binary).name} kill failed: {result.stderr.strip()} (container {container_id})")

    def delete(self, container_id: str) -> None:
        """Remove the container (killing it if it still runs); a container already gone is fine."""
        if not (self.state_root / container_id).exists():
            return  # the runtime keeps one state directory per container: no need to ask it
        result = self._run("delete", "--force", container_id)
        if result.returncode != 0 and "does not exist" not in result.stderr:
            raise OciRuntimeError(f"{Path(self.binary).name} delete failed: {result.stderr.strip()} (container {container_id})")

    def list_ids(self) -> List[str]:
        """Every container the runtime has state for under our root (one directory each)."""
        return sorted(entry.name for entry in self.state_root.iterdir() if entry.is_dir())


def _run_until(command: List[str], timeout: float, *, stdout: int, stderr: int) -> subprocess.CompletedProcess[str]:
    """subprocess.run with a deadline enforced by a timer that kills the process.

    Why not ``subprocess.run(timeout=...)``: with a timeout, Popen.wait polls with sleeps of up
    to 50 ms (CPython's ``_wait``), which on a 30 ms ``runc run -d`` nearly doubles the time to
    start an instance. Without one it blocks in waitpid and returns the moment runc exits.
    """
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, text=True)
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        process.kill()

    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    timer.start()
    try:
        out, err = process.communicate()
    finally:
        timer.cancel()
    if expired.is_set():
        raise OSError(f"no answer within {timeout:g} s: killed")
    return subprocess.CompletedProcess(command, process.returncode, out or "", err or "")


def _last_error(log_file: Path) -> str:
    try:
        lines = log_file.read_text(errors="replace").splitlines()
    except OSError:
        return "(no runtime log)"
    messages = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            messages.append(line)
            continue
        if entry.get("level") in ("error", "fatal"):
            messages.append(str(entry.get("msg", "")))
    return "; ".join(messages[-3:]) or "(the runtime logged no error)"

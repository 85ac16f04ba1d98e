"""Helpers for the launcher tests: the runtime id, waiting, a recording Sender, cleanup."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, List

from aos_sm.agent.sminfo import runtime_id
from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

NODE_ID = "node-launcher-test"
RUNC_ID = runtime_id("runc", NODE_ID)


def remove_containers(state_root: Path) -> None:
    """Delete (killing) every container runc knows under ``state_root`` (``<launcher>/runtime/runc``),
    and detach the instances' root filesystems (a killed agent leaves them mounted)."""
    if state_root.is_dir():
        for entry in state_root.iterdir():
            subprocess.run(["runc", "--root", str(state_root), "delete", "--force", entry.name],
                           capture_output=True, timeout=30)
    roots = str(state_root.parents[1] / "rootfs")
    mounted = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    for point in sorted((p for p in mounted if p == roots or p.startswith(roots + "/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=30)


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll ``predicate`` (for conditions on files and processes, which notify nobody)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class RecordingSender:
    """A Sender that keeps every message and lets a test wait for one."""

    def __init__(self) -> None:
        self.messages: List[sm_pb2.SMOutgoingMessages] = []
        self._cond = threading.Condition()

    def send(self, message: sm_pb2.SMOutgoingMessages) -> None:
        with self._cond:
            self.messages.append(message)
            self._cond.notify_all()

    def of_kind(self, kind: str) -> List[Any]:
        with self._cond:
            return [getattr(m, kind) for m in self.messages if m.WhichOneof("SMOutgoingMessage") == kind]

    def statuses(self) -> List[sm_pb2.InstanceStatus]:
        return [s for update in self.of_kind("update_instances_status") for s in update.instances]

    def wait(self, predicate: Callable[["RecordingSender"], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out; sent so far: {self.messages}")
                self._cond.wait(remaining)


def quick_item_config(**extra: object) -> dict:
    """An item config whose start window is short (tests wait for ``active``, not for 6 s)."""
    config: dict = {"runParameters": {"startInterval": "300ms", "startBurst": 3, "restartInterval": "100ms"}}
    config.update(extra)
    return config


class PhaseLog:
    """A launcher observer that keeps every phase each instance entered; tests wait on it."""

    def __init__(self) -> None:
        self.phases: dict = {}
        self._cond = threading.Condition()

    def __call__(self, key: object, phase: object) -> None:
        with self._cond:
            self.phases.setdefault(key, []).append(phase)
            self._cond.notify_all()

    def wait(self, predicate: Callable[[dict], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.phases):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out; phases so far: {self.phases}")
                self._cond.wait(remaining)

"""Fixtures for the launcher tests: a static-busybox image layer, a blob server on loopback, a
unique cgroup parent (removed afterwards) and launchers whose containers are all removed."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, List

import pytest

from oci_fixture import BlobServer, busybox_layer, remove_cgroups, static_busybox, system_test_problem

from aos_sm.agent.launcher import Launcher, NullMonitor
from aos_sm.agent.sminfo import runtime_id
from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

NODE_ID = "node-launcher-test"
RUNC_ID = runtime_id("runc", NODE_ID)


@pytest.fixture
def system() -> None:
    problem = system_test_problem()
    if problem is not None:
        pytest.skip(f"launcher system test skipped because {problem}")


@pytest.fixture(scope="session")
def layer() -> bytes:
    busybox = static_busybox()
    if busybox is None:
        pytest.skip("no static busybox for the test image because busybox-static is not installed")
    return busybox_layer(busybox)


@pytest.fixture
def blob_server(tmp_path: Path) -> Iterator[BlobServer]:
    server = BlobServer(tmp_path / "served")
    yield server
    server.close()


@pytest.fixture
def cgroup_parent() -> Iterator[str]:
    parent = f"aos-sm-test-{uuid.uuid4().hex[:8]}"
    yield parent
    remove_cgroups(parent)


def remove_containers(state_root: Path) -> None:
    """Delete (killing) every container runc knows under ``state_root``."""
    if not state_root.is_dir():
        return
    for entry in state_root.iterdir():
        subprocess.run(["runc", "--root", str(state_root), "delete", "--force", entry.name],
                       capture_output=True, timeout=30)


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


@pytest.fixture
def make_launcher(tmp_path: Path, cgroup_parent: str) -> Iterator[Callable[..., Launcher]]:
    made: List[Launcher] = []

    def make(sender: RecordingSender, resolver: Callable[[List[str]], List[str]], **extra: Any) -> Launcher:
        options: dict = {"monitor": NullMonitor(), "stop_timeout": 5.0}
        options.update(extra)
        launcher = Launcher(sender=sender, working_dir=tmp_path / "work",
                            runtimes={RUNC_ID: ("runc", "runc")}, resolver=resolver,
                            cgroup_parent=cgroup_parent, **options)
        made.append(launcher)
        return launcher

    yield make
    for launcher in made:
        launcher.stop_all_instances()
        launcher.stop()
    remove_containers(tmp_path / "work" / "launcher" / "runtime" / "runc")

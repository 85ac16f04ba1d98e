"""Fixtures for the launcher tests: a static-busybox image layer, a blob server on loopback, a
unique cgroup parent (removed afterwards) and launchers whose containers are all removed."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, List

import pytest

from launcher_helpers import RUNC_ID, RecordingSender, remove_containers
from oci_fixture import BlobServer, busybox_layer, remove_cgroups, static_busybox, system_test_problem

from aos_sm.agent.launcher import Launcher, NullMonitor


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

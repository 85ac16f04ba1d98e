"""A real journal for the logs tests: a namespaced systemd-journald started by the test.

The machine has no systemd as PID 1 and no journald, but ``systemd-journald <namespace>`` runs
standalone: it listens on /run/systemd/journal.<namespace>/socket and writes its own journal
directory, which journalctl reads with ``--directory``. Nothing else on the node is touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from log_helpers import JOURNALD, NamespacedJournal


@pytest.fixture
def journal() -> Iterator[NamespacedJournal]:
    if os.geteuid() != 0:
        pytest.skip("a journald namespace needs root because it owns /run/systemd and /var/log/journal")
    if not JOURNALD.exists() or shutil.which("journalctl") is None or not Path("/etc/machine-id").exists():
        pytest.skip("no systemd-journald / journalctl / machine-id on this machine, so no real journal")
    namespace = f"aostest{uuid.uuid4().hex[:8]}"
    process = subprocess.Popen([str(JOURNALD), namespace], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    test_journal = NamespacedJournal(namespace, process)
    try:
        deadline = time.monotonic() + 20
        while not test_journal.socket.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"systemd-journald {namespace} did not start (exit {process.poll()}), so no real journal")
            time.sleep(0.05)
        yield test_journal
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for path in [*test_journal.candidates, test_journal.socket.parent]:
            shutil.rmtree(path, ignore_errors=True)

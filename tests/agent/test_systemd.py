"""`aos-sm run` under systemd: the notify protocol against a real AF_UNIX datagram socket.

The machine has no systemd as PID 1, so the test plays systemd's part: it binds the socket,
hands its name to the real `aos-sm run` process in ``NOTIFY_SOCKET`` (a path and an abstract
``@name``) and reads what the agent says. Where systemd is PID 1, the unit itself is run.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import pytest

from contract_cm import ContractCM

from agent_helpers import make_config, registered

from aos_sm.agent import sdnotify
from aos_sm.agent.gateway import Gateway
from aos_sm.agent.outbox import Outbox
from aos_sm.proto.servicemanager.v5 import servicemanager_pb2 as sm_pb2

ROOT = Path(__file__).resolve().parents[2]
WAIT = 30.0  # generous: the machine is shared


class FakeSystemd:
    """The receiving end of $NOTIFY_SOCKET: a bound datagram socket, messages split in fields."""

    def __init__(self, kind: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._dir: Optional[str] = None
        if kind == "abstract":
            name = f"aos-sm-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.env_value = "@" + name
        else:  # a short directory: AF_UNIX paths stop at 108 bytes, pytest's tmp_path may not
            self._dir = tempfile.mkdtemp(prefix="sdn-")
            path = os.path.join(self._dir, "notify")
            self.sock.bind(path)
            self.env_value = path
        self.received: List[List[str]] = []

    def next(self, timeout: float = WAIT) -> List[str]:
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096)
        fields = data.decode().split("\n")
        self.received.append(fields)
        return fields

    def wait_for(self, field: str, timeout: float = WAIT) -> List[List[str]]:
        """Every message up to and including the first one carrying ``field``."""
        seen: List[List[str]] = []
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {field} within {timeout}s; got {self.received}")
            seen.append(self.next(remaining))
            if field in seen[-1]:
                return seen

    def drain(self) -> List[List[str]]:
        self.sock.setblocking(False)
        drained: List[List[str]] = []
        try:
            while True:
                drained.append(self.sock.recv(4096).decode().split("\n"))
        except BlockingIOError:
            return drained
        finally:
            self.sock.setblocking(True)

    def close(self) -> None:
        self.sock.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)


@pytest.fixture(params=["path", "abstract"])
def fake_systemd(request: pytest.FixtureRequest) -> Iterator[FakeSystemd]:
    systemd = FakeSystemd(request.param)
    yield systemd
    systemd.close()


@contextlib.contextmanager
def _reaped(process: "subprocess.Popen[bytes]") -> Iterator["subprocess.Popen[bytes]"]:
    """Whatever the test asserts, the agent it started does not outlive it."""
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _run_agent(cm: ContractCM, tmp_path: Path, env: dict, stderr: int) -> "subprocess.Popen[bytes]":  # type: ignore[type-arg]
    config = tmp_path / "aos_servicemanager.cfg"
    config.write_text(json.dumps({
        "nodeId": "node-systemd", "cmServerURL": cm.address, "network": {"enabled": False}, "tlsMode": "plaintext",
        "workingDir": str(tmp_path / "work"), "resourcesConfigFile": str(tmp_path / "none.cfg"),
    }))
    return subprocess.Popen(
        [sys.executable, "-m", "aos_sm.agent.cli", "run", "--config", str(config)],
        env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=stderr, cwd=tmp_path,  # a core dump lands there
    )


def test_aos_sm_run_says_ready_feeds_the_watchdog_and_says_stopping(
    contract_cm: ContractCM, fake_systemd: FakeSystemd, tmp_path: Path
) -> None:
    # stderr is a pipe whose device:inode is announced in JOURNAL_STREAM, as systemd does for
    # StandardError=journal: the log lines must then carry <N> priorities and no timestamps.
    read_end, write_end = os.pipe()
    stat = os.fstat(write_end)
    process = _run_agent(contract_cm, tmp_path, {
        "NOTIFY_SOCKET": fake_systemd.env_value,
        "WATCHDOG_USEC": "400000",  # a ping every 0.2 s
        "JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}",
    }, stderr=write_end)
    os.close(write_end)
    chunks: List[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: os.read(read_end, 65536), b"")))
    reader.start()
    try:
        before_ready = fake_systemd.wait_for("READY=1")
        # READY comes once the first connect has started: its STATUS line came first.
        assert ["STATUS=connecting to CM at " + contract_cm.address] in before_ready
        session = registered(contract_cm, timeout=WAIT)
        fake_systemd.wait_for(f"STATUS=registered with CM at {contract_cm.address}")
        session.send("get_node_config_status")  # Synced -> Processing -> Synced
        session.wait_for("node_config_status", WAIT)
        pings = 0
        while pings < 3:  # the watchdog keeps being fed while the agent runs
            pings += fake_systemd.wait_for("WATCHDOG=1").count(["WATCHDOG=1"])
        process.send_signal(signal.SIGTERM)
        assert ["STOPPING=1", "STATUS=stopping"] in fake_systemd.wait_for("STOPPING=1")
        assert process.wait(timeout=WAIT) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        reader.join(WAIT)
        os.close(read_end)
    every = [fields for fields in fake_systemd.received + fake_systemd.drain()]
    assert every.count(["READY=1"]) == 1
    # One STATUS per change that reads differently: a CM command does not repeat it.
    assert every.count([f"STATUS=registered with CM at {contract_cm.address}"]) == 1
    # Nothing but STATUS lines after STOPPING: no watchdog ping from a stopping agent.
    after = every[every.index(["STOPPING=1", "STATUS=stopping"]) + 1:]
    assert all(fields[0].startswith("STATUS=") for fields in after), after
    log_lines = b"".join(chunks).decode().splitlines()
    assert any(line.startswith("<6>aos_sm") and "registered with CM" in line for line in log_lines), log_lines
    assert all(line[:1] == "<" and line[2:3] == ">" for line in log_lines), log_lines


def test_without_journal_stream_log_lines_keep_their_timestamps(
    contract_cm: ContractCM, tmp_path: Path
) -> None:
    process = _run_agent(contract_cm, tmp_path, {"JOURNAL_STREAM": "1:2"}, stderr=subprocess.PIPE)
    with _reaped(process):
        registered(contract_cm, timeout=WAIT)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=WAIT)
    lines = stderr.decode().splitlines()
    # A JOURNAL_STREAM that is not this stderr (inherited from a shell) changes nothing.
    assert lines and all(line[:2] == "20" for line in lines if "aos_sm" in line), lines
    assert not any(line.startswith("<") for line in lines), lines


def test_watchdog_pid_of_another_process_turns_the_watchdog_off(
    contract_cm: ContractCM, fake_systemd: FakeSystemd, tmp_path: Path
) -> None:
    process = _run_agent(contract_cm, tmp_path, {
        "NOTIFY_SOCKET": fake_systemd.env_value, "WATCHDOG_USEC": "100000", "WATCHDOG_PID": "1",
    }, stderr=subprocess.DEVNULL)
    with _reaped(process):
        fake_systemd.wait_for("READY=1")
        registered(contract_cm, timeout=WAIT)
        fake_systemd.wait_for(f"STATUS=registered with CM at {contract_cm.address}")
        process.send_signal(signal.SIGTERM)
        fake_systemd.wait_for("STOPPING=1")
        assert process.wait(timeout=WAIT) == 0
    # The agent ran through registration (several ping periods of 50 ms) and never pinged.
    assert not any("WATCHDOG=1" in fields for fields in fake_systemd.received + fake_systemd.drain())


def test_a_wedged_event_pump_stops_the_watchdog_and_a_freed_one_resumes_it(
    contract_cm: ContractCM, fake_systemd: FakeSystemd, tmp_path: Path
) -> None:
    """A CM handler that never returns holds the gateway's pump: the pings must stop, since
    that is the hang systemd's watchdog exists to catch."""
    entered, release = threading.Event(), threading.Event()

    def handler(message: sm_pb2.SMIncomingMessages) -> None:
        entered.set()
        release.wait(WAIT)

    gateway = Gateway(
        make_config(tmp_path, contract_cm.address), target=contract_cm.address,
        registration=lambda: (sm_pb2.SMInfo(node_id="node-wedge"), sm_pb2.NodeInstancesStatus()),
        handler=handler, outbox=Outbox(),
    )
    notifier = sdnotify.Notifier(sdnotify.socket_address(fake_systemd.env_value))
    watchdog = sdnotify.Watchdog(notifier, 0.05, gateway.in_loop)
    gateway.start()
    try:
        session = registered(contract_cm, timeout=WAIT)
        watchdog.start()
        fake_systemd.wait_for("WATCHDOG=1")
        session.send("get_node_config_status")
        assert entered.wait(WAIT)
        # Pings are sent under the pump's lock, so none can still be on its way: whatever the
        # socket holds now was sent before the handler took the pump.
        fake_systemd.drain()
        time.sleep(1.0)  # twenty ping periods
        assert fake_systemd.drain() == []
        release.set()
        fake_systemd.wait_for("WATCHDOG=1")
    finally:
        release.set()
        watchdog.stop()
        assert gateway.stop(timeout=WAIT)
        notifier.close()


def test_a_watchdog_abort_leaves_every_threads_stack_in_the_log(
    contract_cm: ContractCM, tmp_path: Path
) -> None:
    """systemd ends a silent agent with SIGABRT (WatchdogSignal): the journal should then say
    where each thread was."""
    process = _run_agent(contract_cm, tmp_path, {}, stderr=subprocess.PIPE)
    with _reaped(process):
        registered(contract_cm, timeout=WAIT)
        process.send_signal(signal.SIGABRT)
        _, stderr = process.communicate(timeout=WAIT)
    assert process.returncode == -signal.SIGABRT
    text = stderr.decode()
    assert "Fatal Python error: Aborted" in text, text
    assert text.count("(most recent call first)") >= 2, text  # the main thread and the reader
    assert "gateway.py" in text, text


def _tgkill(pid: int, tid: int, signum: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "tgkill"):
        pytest.skip("the C library has no tgkill() (glibc 2.30+) to aim a signal at one thread")
    if libc.tgkill(pid, tid, signum) != 0:
        raise OSError(ctypes.get_errno(), f"tgkill({pid}, {tid})")


def _signal_mask_blocks(pid: int, tid: int, signum: int) -> bool:
    status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
    blocked = int(status.split("SigBlk:")[1].split()[0], 16)
    return bool(blocked & (1 << (signum - 1)))


def test_sigterm_that_lands_on_a_grpc_thread_still_stops_the_agent(
    contract_cm: ContractCM, tmp_path: Path
) -> None:
    """systemd's SIGTERM goes to the process; the kernel may give it to any thread. Aimed at a
    non-main thread here, it must still stop the agent (it used to be lost: SIGKILL later)."""
    process = _run_agent(contract_cm, tmp_path, {}, stderr=subprocess.PIPE)
    with _reaped(process):
        registered(contract_cm, timeout=WAIT)
        others = [int(t) for t in os.listdir(f"/proc/{process.pid}/task") if int(t) != process.pid]
        target = next(t for t in others if not _signal_mask_blocks(process.pid, t, signal.SIGTERM))
        _tgkill(process.pid, target, signal.SIGTERM)
        _, stderr = process.communicate(timeout=WAIT)
    assert process.returncode == 0
    assert "received SIGTERM, stopping" in stderr.decode()


# The pieces, without a process.


def test_socket_addresses_follow_sd_notify() -> None:
    assert sdnotify.socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert sdnotify.socket_address("@abc") == "\0abc"
    assert sdnotify.socket_address("vsock:2:1234") is None
    assert not sdnotify.Notifier.from_environment({}).notify("READY=1")


def test_watchdog_interval_is_half_the_period_and_honours_watchdog_pid() -> None:
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000"}, 42) == 15.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, 42) == 15.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, 42) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "0"}, 42) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "soon"}, 42) is None
    assert sdnotify.watchdog_interval({}, 42) is None


def test_a_vanished_systemd_does_not_raise(fake_systemd: FakeSystemd) -> None:
    notifier = sdnotify.Notifier(sdnotify.socket_address(fake_systemd.env_value))
    assert notifier.notify("READY=1")
    fake_systemd.close()
    assert not notifier.notify("WATCHDOG=1")
    notifier.close()


def test_journal_lines_carry_the_syslog_priority_on_every_line() -> None:
    formatter = sdnotify.JournalFormatter()
    record = logging.LogRecord("aos_sm.x", logging.WARNING, __file__, 1, "two\nlines", None, None)
    assert formatter.format(record) == "<4>aos_sm.x: two\n<4>lines"
    assert [sdnotify.syslog_priority(level) for level in (10, 20, 30, 40, 50)] == [7, 6, 4, 3, 2]


# The unit for real, where systemd runs this machine.


def _systemd_is_pid_1() -> Tuple[bool, str]:
    try:
        comm = Path("/proc/1/comm").read_text().strip()
    except OSError as err:
        return False, f"cannot read /proc/1/comm: {err}"
    if comm != "systemd" or shutil.which("systemctl") is None:
        return False, f"PID 1 is {comm!r}, not systemd"
    return True, ""


def test_the_unit_runs_under_the_real_systemd(contract_cm: ContractCM, tmp_path: Path) -> None:
    ok, why = _systemd_is_pid_1()
    if not ok:
        pytest.skip(f"the unit cannot be started for real because {why} (no service manager to run it)")
    if os.geteuid() != 0:
        pytest.skip("installing a system unit needs root")
    config = tmp_path / "aos_servicemanager.cfg"
    config.write_text(json.dumps({
        "nodeId": "node-unit", "cmServerURL": contract_cm.address, "network": {"enabled": False}, "tlsMode": "plaintext",
        "workingDir": str(tmp_path / "work"), "resourcesConfigFile": str(tmp_path / "none.cfg"),
    }))
    unit_name = f"aos-sm-test-{uuid.uuid4().hex[:8]}.service"
    unit = (ROOT / "packaging" / "aos-sm.service").read_text()
    executable = shutil.which("aos-sm", path=str(Path(sys.executable).parent))
    assert executable is not None
    # The packaged unit, with only the binary and the config moved to this checkout's.
    unit = unit.replace("/usr/bin/aos-sm", executable).replace("/etc/aos/aos_servicemanager.cfg", str(config))
    path = Path("/run/systemd/system") / unit_name
    path.write_text(unit)
    try:
        subprocess.run(["systemctl", "daemon-reload"], check=True)
        # Type=notify: start returns only after READY=1, and fails if it never comes.
        subprocess.run(["systemctl", "start", unit_name], check=True, timeout=WAIT)
        registered(contract_cm, timeout=WAIT)
        shown = subprocess.run(["systemctl", "show", "-p", "ActiveState,StatusText", unit_name],
                               check=True, capture_output=True, text=True).stdout
        assert "ActiveState=active" in shown
        assert f"StatusText=registered with CM at {contract_cm.address}" in shown
        subprocess.run(["systemctl", "stop", unit_name], check=True, timeout=WAIT)
        shown = subprocess.run(["systemctl", "show", "-p", "Result", unit_name],
                               check=True, capture_output=True, text=True).stdout
        assert "Result=success" in shown
    finally:
        subprocess.run(["systemctl", "stop", unit_name], check=False)
        path.unlink()
        subprocess.run(["systemctl", "daemon-reload"], check=False)

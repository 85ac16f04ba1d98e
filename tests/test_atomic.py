"""write_atomic: replacement, mode, failure leaves the old file and no temp files, no torn reads."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from aos_sm.agent.atomic import write_atomic


def test_creates_and_replaces_with_mode(tmp_path: Path) -> None:
    target = tmp_path / "file.cfg"
    write_atomic(target, b"first")
    assert target.read_bytes() == b"first"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    write_atomic(target, b"second", mode=0o644)
    assert target.read_bytes() == b"second"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert sorted(os.listdir(tmp_path)) == ["file.cfg"]


def test_failed_write_keeps_old_content_and_removes_temp(tmp_path: Path) -> None:
    target = tmp_path / "file.cfg"
    target.write_bytes(b"old")
    # Not bytes: fails inside the write, after the temp file exists.
    with pytest.raises(TypeError):
        write_atomic(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["file.cfg"]


def test_failed_rename_keeps_old_content_and_removes_temp(tmp_path: Path) -> None:
    # The target is a non-empty directory: rename(2) fails after the data is written and synced.
    target = tmp_path / "busy"
    target.mkdir()
    (target / "keep").write_bytes(b"old")
    with pytest.raises(OSError):
        write_atomic(target, b"new")
    assert (target / "keep").read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["busy"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory write permission")
def test_read_only_directory_keeps_old_content(tmp_path: Path) -> None:
    target = tmp_path / "file.cfg"
    target.write_bytes(b"old")
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(PermissionError):
            write_atomic(target, b"new")
    finally:
        tmp_path.chmod(0o700)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["file.cfg"]


def test_missing_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "absent" / "file.cfg", b"data")


def test_concurrent_writers_never_produce_a_torn_file(tmp_path: Path) -> None:
    target = tmp_path / "file.cfg"
    # Large enough that a non-atomic write would be observed half done.
    payloads = [bytes([ord("a") + index]) * 256_000 for index in range(4)]
    write_atomic(target, payloads[0])
    errors: list[BaseException] = []

    def writer(payload: bytes) -> None:
        try:
            for _ in range(15):
                write_atomic(target, payload)
        except BaseException as err:  # surfaced by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(payload,)) for payload in payloads]
    for thread in threads:
        thread.start()
    reads = 0
    while any(thread.is_alive() for thread in threads) or reads == 0:
        assert target.read_bytes() in payloads
        reads += 1
    for thread in threads:
        thread.join()
    assert errors == []
    assert target.read_bytes() in payloads
    assert os.listdir(tmp_path) == ["file.cfg"]

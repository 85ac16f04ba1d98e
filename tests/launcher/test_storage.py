"""Storage directories and state files on the host (agent/launcher/storage.py), on real files."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import List

import pytest

from aos_sm.agent.errors import InvalidArgument
from aos_sm.agent.launcher.storage import check, create_state, create_storage, relative_parts


def tree(root: Path) -> List[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


@pytest.mark.parametrize("path", ["../../etc", "a/../../b", "/etc", "", ".", "./"])
def test_paths_that_escape_or_name_nothing_are_invalid(path: str) -> None:
    with pytest.raises(InvalidArgument):
        relative_parts(path, "storage_path")


def test_a_symlink_anywhere_on_the_way_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    base = tmp_path / "storages"
    (base / "item").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (base / "item" / "subj").symlink_to(outside)
    (base / "last").symlink_to(outside)
    before = tree(tmp_path)
    for path in ("item/subj/0", "last"):
        with pytest.raises(InvalidArgument, match="symlink"):
            check(base, path, "storage_path", True)
        with pytest.raises(InvalidArgument, match="symlink"):
            create_storage(base, relative_parts(path, "storage_path"), 1000, 1000)
    assert tree(tmp_path) == before


def test_an_existing_entry_of_the_wrong_kind_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "f").write_text("")
    with pytest.raises(InvalidArgument, match="not a regular file"):
        check(tmp_path, "a", "state_path", False)
    with pytest.raises(InvalidArgument, match="not a directory"):
        check(tmp_path, "f", "storage_path", True)
    with pytest.raises(InvalidArgument):
        check(tmp_path, "f/x", "storage_path", True)


def test_check_creates_nothing(tmp_path: Path) -> None:
    assert check(tmp_path / "missing", "item/subj/0", "storage_path", True) == ("item", "subj", "0")
    assert tree(tmp_path) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files to another uid needs root")
def test_created_as_instances_md_says_owned_by_the_instance(tmp_path: Path) -> None:
    storage = create_storage(tmp_path / "storages", ("item", "subj", "0"), 1000, 1001)
    state = create_state(tmp_path / "states", ("item", "subj", "0", "state.dat"), 1000, 1001)
    for path, mode, kind in ((storage, 0o755, stat.S_ISDIR), (state, 0o600, stat.S_ISREG)):
        info = path.stat()
        assert kind(info.st_mode) and stat.S_IMODE(info.st_mode) == mode
        assert (info.st_uid, info.st_gid) == (1000, 1001)
    parent = storage.parent.stat()
    assert (parent.st_uid, stat.S_IMODE(parent.st_mode)) == (0, 0o755)
    # What exists is kept as it is (the instance's data, its owner).
    (storage / "data").write_text("kept")
    state.write_text("state")
    os.chown(storage, 1002, 1002)
    assert create_storage(tmp_path / "storages", ("item", "subj", "0"), 1000, 1001) == storage
    assert create_state(tmp_path / "states", ("item", "subj", "0", "state.dat"), 1000, 1001) == state
    assert storage.stat().st_uid == 1002 and (storage / "data").read_text() == "kept" and state.read_text() == "state"

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

BOARDS = Path(__file__).resolve().parents[1] / "data" / "boards"


@pytest.fixture
def board_copy(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Copy a board tree into tmp_path so a test can corrupt it."""

    def copy(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(BOARDS / name, target)
        return target

    return copy

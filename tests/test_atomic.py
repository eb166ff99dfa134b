"""Atomic writes leave complete artefacts with the permissions a plain open()/mkdir() would give."""
from __future__ import annotations

import os
import stat

import pytest

from kd.utils.atomic import atomic_directory, atomic_file, atomic_path


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_files_and_folders_follow_the_umask_not_0600(tmp_path, umask_022):
    with atomic_file(tmp_path / "table.md") as handle:
        handle.write("| a |\n")
    with atomic_path(tmp_path / "model.bin") as temporary:
        temporary.write_bytes(b"\x00")
    with atomic_directory(tmp_path / "cache") as staging:
        (staging / "x.npy").write_bytes(b"1")
    assert mode(tmp_path / "table.md") == 0o644
    assert mode(tmp_path / "model.bin") == 0o644
    assert mode(tmp_path / "cache") == 0o755


def test_a_failed_write_leaves_neither_the_file_nor_a_temporary(tmp_path):
    (tmp_path / "keep.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_file(tmp_path / "keep.txt") as handle:
        handle.write("half")
        raise RuntimeError("disk on fire")
    assert (tmp_path / "keep.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_a_folder_replaced_whole_or_not_at_all(tmp_path):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "old.npy").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "cache") as staging:
        (staging / "new.npy").write_text("new")
        raise RuntimeError("killed")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["old.npy"]
    with atomic_directory(tmp_path / "cache") as staging:
        (staging / "new.npy").write_text("new")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["new.npy"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]

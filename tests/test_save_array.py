"""kd.cache.store.save_array: a write that ends short is a full disk whatever its error says (numpy's
short write carries no errno), checked against the size of the file np.save writes when it fits."""
from __future__ import annotations

import errno
import io
from pathlib import Path

import numpy as np
import pytest

from kd.cache.store import save_array
from kd.errors import DiskFullError

SAVE = np.save  # the real one, before a test replaces it
ARRAYS = [np.arange(7, dtype=np.int64), np.zeros((0,), np.uint64), np.ones((300, 17), np.float16),
          np.ones((5, 3), np.float32)]


def whole_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    SAVE(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: f"{a.dtype}{a.shape}")
def test_a_whole_write_passes_and_reads_back(tmp_path, array):
    save_array(tmp_path / "a.npy", array, tmp_path)
    assert (tmp_path / "a.npy").read_bytes() == whole_bytes(array)


@pytest.mark.parametrize("raises", [True, False], ids=["numpy-error", "silent"])
def test_a_short_write_is_a_full_disk_naming_the_folder(tmp_path, monkeypatch, raises):
    array = ARRAYS[2]

    def short_save(path, value, *args, **kwargs):
        data = whole_bytes(value)
        Path(path).write_bytes(data[:len(data) - 100])
        if raises:  # what numpy's tofile raises: no errno, no strerror
            raise OSError(f"{len(data)} requested and {len(data) - 100} written")
    monkeypatch.setattr(np, "save", short_save)
    with pytest.raises(DiskFullError) as caught:
        save_array(tmp_path / "a.npy", array, tmp_path / "staging")
    assert str(caught.value) == f"{tmp_path / 'staging'}: no space left on device"


def test_other_errors_are_not_taken_for_a_full_disk(tmp_path, monkeypatch):
    def refused(path, value, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))
    monkeypatch.setattr(np, "save", refused)
    with pytest.raises(PermissionError):
        save_array(tmp_path / "a.npy", ARRAYS[0], tmp_path)

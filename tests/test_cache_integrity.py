"""A cache folder that was damaged or tampered with is refused when it is opened, naming the file
at fault: truncated arrays, other bytes in place of an array, arrays of Python objects, a manifest
whose names lead outside the folder. No MLflow: caches are written with CacheWriter."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from kd.cache.store import CacheReader
from kd.errors import KdError
from tests.test_cache import write_random_cache


@pytest.fixture
def cache(tmp_path) -> Path:
    write_random_cache(tmp_path / "cache", "float32", seed=5)
    return tmp_path / "cache"


def manifest(cache: Path) -> dict:
    return json.loads((cache / "manifest.json").read_text())


def rewrite_manifest(cache: Path, change) -> None:
    data = manifest(cache)
    change(data)
    (cache / "manifest.json").write_text(json.dumps(data))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - 12])


def other_bytes(path: Path) -> None:
    path.write_bytes(b"\x80\x04\x95 this was a pickle, or anything else" * 3)


def objects(path: Path) -> None:
    array = np.empty(len(np.load(path, mmap_mode="r")), dtype=object)
    np.save(path, array, allow_pickle=True)


def wrong_dtype(path: Path) -> None:
    np.save(path, np.load(path).astype(np.float64))


@pytest.mark.parametrize("damage, needle", [(truncate, "truncated"), (other_bytes, "not a numpy array file"),
                                            (objects, "dtype object"), (wrong_dtype, "dtype float64")])
@pytest.mark.parametrize("name", ["offsets.npy", "hashes.npy", "logits.npy"])
def test_a_damaged_array_is_named_when_the_cache_is_opened(cache, damage, needle, name):
    path = cache / "t" / "devel" / name
    damage(path)
    with pytest.raises(KdError) as raised:
        CacheReader(cache)
    message = str(raised.value)
    assert message.startswith(f"{path}:") and "damaged cache" in message
    if not (damage is objects and name == "logits.npy"):  # a 1-d object array also has the wrong shape
        assert needle in message


def test_offsets_that_do_not_add_up_are_refused(cache):
    path = cache / "t" / "train" / "offsets.npy"
    offsets = np.load(path)
    offsets[3], offsets[4] = offsets[4], offsets[3]  # same dtype and shape, out of order
    np.save(path, offsets)
    with pytest.raises(KdError, match=r"train/offsets\.npy: sentence offsets"):
        CacheReader(cache)


@pytest.mark.parametrize("field, value", [("layers", ["../../outside"]), ("layers", ["logits", "logits"]),
                                          ("dtype", "object"), ("tasks", ["t"])])
def test_a_manifest_with_unknown_names_is_refused(cache, field, value):
    rewrite_manifest(cache, lambda data: data.__setitem__(field, value))
    with pytest.raises(KdError, match=rf"manifest\.json: {field}"):
        CacheReader(cache)


def test_a_layer_named_with_a_path_never_reads_outside_the_cache(cache, tmp_path):
    """The attack of the issue: a layer `../../...` whose file lies outside the cache, right shape
    and all, was read and trained on."""
    outside = tmp_path / "planted"
    outside.mkdir()
    np.save(outside / "x.npy", np.zeros((10, 5), np.float32))
    layer = os.path.relpath(outside / "x", cache / "t" / "train")

    def plant(data):
        data["layers"] = [layer]
        data["widths"]["t"] = {layer: 5}
    rewrite_manifest(cache, plant)
    with pytest.raises(KdError, match="layers"):
        CacheReader(cache)


@pytest.mark.parametrize("task", ["../elsewhere", "/tmp"])
def test_a_task_folder_outside_the_cache_is_refused(cache, task):
    def move(data):
        for key in ("tasks", "splits", "widths"):
            data[key] = {task: data[key]["t"]}
    rewrite_manifest(cache, move)
    with pytest.raises(KdError, match="leads outside the cache folder"):
        CacheReader(cache)


def test_a_planted_link_to_a_file_outside_is_refused(cache, tmp_path):
    target = cache / "t" / "train" / "logits.npy"
    copy = tmp_path / "elsewhere.npy"
    copy.write_bytes(target.read_bytes())
    target.unlink()
    target.symlink_to(copy)
    with pytest.raises(KdError, match=r"logits\.npy: leads outside the cache folder"):
        CacheReader(cache)


@pytest.mark.parametrize("change", [lambda d: d.pop("splits"), lambda d: d["splits"]["t"].pop("train") and
                                    d["splits"]["t"].__setitem__("extra", {"sentences": 1, "tokens": 1}),
                                    lambda d: d["widths"]["t"].__setitem__("logits", "wide"),
                                    lambda d: d.__setitem__("surprise", 1),
                                    lambda d: d["splits"].__setitem__("u", {})])
def test_a_malformed_manifest_is_one_error_naming_it(cache, change):
    rewrite_manifest(cache, change)
    with pytest.raises(KdError, match=r"manifest\.json"):
        CacheReader(cache)


def test_an_intact_cache_still_reads(cache):
    reader = CacheReader(cache)
    train = reader.split("t", "train")
    assert train.layers["logits"].shape[1] == 5 and train.offsets[0] == 0

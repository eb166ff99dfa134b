"""Checking a cache folder against its manifest before any array is used.

A cache is read from disk that someone else may have written, damaged or planted files in: the
manifest's names become paths, and its arrays are memory-mapped. Each is checked here once, when
the cache is opened: names are the known layers and splits and resolve inside the cache folder,
and every array file has the manifest's dtype and shape and exactly the bytes they need, so a
damaged file is named instead of failing later inside numpy (or being read as other data).
"""
from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from kd.errors import KdError

DAMAGED = "damaged cache; re-run kd cache-logits"


def _fail(where: Path | str, key: str, message: str) -> KdError:
    return KdError(f"{where}: {key}: {message}")


def check_manifest_data(path: Path, data: Any, layers: Collection[str], dtypes: Collection[str],
                        splits: Collection[str]) -> None:
    """The manifest's JSON has the fields and value types a Manifest needs, names only known layers
    and splits, and gives every task a width per layer and an entry per split."""
    if not isinstance(data, dict):
        raise KdError(f"{path}: expected a JSON object")
    for key, kind, name in (("tasks", dict, "mapping"), ("splits", dict, "mapping"), ("layers", list, "list"),
                            ("widths", dict, "mapping"), ("dtype", str, "string")):
        if not isinstance(data.get(key), kind):
            raise _fail(path, key, f"missing or not a {name}")
    unknown = [layer for layer in data["layers"] if layer not in layers]
    if unknown or not data["layers"] or len(set(data["layers"])) != len(data["layers"]):
        raise _fail(path, "layers", f"{data['layers']!r}: expected distinct names among {', '.join(layers)}")
    if data["dtype"] not in dtypes:
        raise _fail(path, "dtype", f"{data['dtype']!r}: expected one of {', '.join(dtypes)}")
    if set(data["splits"]) != set(data["tasks"]):
        raise _fail(path, "splits", f"covers {sorted(data['splits'])}, the tasks are {sorted(data['tasks'])}")
    for task in data["tasks"]:
        task_splits, widths = data["splits"].get(task), data["widths"].get(task)
        if not isinstance(task_splits, dict) or not isinstance(widths, dict):
            raise _fail(path, f"splits.{task}", "missing: every task needs its splits and widths")
        for split, entry in task_splits.items():
            if split not in splits:
                raise _fail(path, f"splits.{task}", f"unknown split {split!r} (expected {', '.join(splits)})")
            if not isinstance(entry, dict) or not all(_count(entry.get(k)) for k in ("sentences", "tokens")):
                raise _fail(path, f"splits.{task}.{split}", "expected sentences and tokens as counts")
        for layer in data["layers"]:
            if not _count(widths.get(layer)) or widths[layer] < 1:
                raise _fail(path, f"widths.{task}.{layer}", "expected a positive width")


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def inside(root: Path, *parts: str) -> Path:
    """root/parts..., refused unless it resolves inside root (no `..`, absolute names or links
    leading out): a manifest's names must not make kd read files elsewhere."""
    path = root.joinpath(*parts)
    if not path.resolve().is_relative_to(root.resolve()):
        raise KdError(f"{path}: leads outside the cache folder {root} ({DAMAGED})")
    return path


def check_array(path: Path, dtype: str, shape: tuple[int, ...]) -> None:
    """The .npy file has this dtype and shape and exactly the bytes they take, read from its
    header alone (an object array or a pickle is never loaded)."""
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f"unsupported .npy version {version}")
            found_shape, _, found_dtype = read_header(handle)
            data_start = handle.tell()
    except FileNotFoundError:
        raise KdError(f"{path}: missing ({DAMAGED})") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise KdError(f"{path}: not a numpy array file ({str(error).splitlines()[0]}; {DAMAGED})") from None
    if found_dtype != np.dtype(dtype):
        raise KdError(f"{path}: dtype {found_dtype}, the manifest says {dtype} ({DAMAGED})")
    if tuple(found_shape) != tuple(shape):
        raise KdError(f"{path}: shape {tuple(found_shape)}, the manifest says {tuple(shape)} ({DAMAGED})")
    expected = data_start + int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    size = path.stat().st_size
    if size != expected:
        raise KdError(f"{path}: {size} bytes, its shape needs {expected} (truncated or padded; {DAMAGED})")


def check_offsets(path: Path, offsets: np.ndarray, tokens: int) -> None:
    """Sentence offsets start at 0, never decrease and end at the manifest's token count."""
    if offsets[0] != 0 or offsets[-1] != tokens or np.any(np.diff(offsets) < 0):
        raise KdError(f"{path}: sentence offsets do not run from 0 to {tokens} tokens ({DAMAGED})")


def check_split_files(root: Path, task: str, split: str, layers: Mapping[str, int], dtype: str,
                      sentences: int, tokens: int) -> Path:
    """Every array of one task and split (offsets, hashes, each layer's (tokens, width) rows);
    returns their folder."""
    check_array(inside(root, task, split, "offsets.npy"), "int64", (sentences + 1,))
    check_array(inside(root, task, split, "hashes.npy"), "uint64", (sentences,))
    for layer, width in layers.items():
        check_array(inside(root, task, split, f"{layer}.npy"), dtype, (tokens, width))
    return inside(root, task, split)

"""The on-disk cache of a teacher's outputs.

Layout of a cache folder:

    manifest.json                     what is in it, and fingerprints of the sentences it covers
    <task>/<split>/offsets.npy        (N + 1,) int64: sentence i is tokens offsets[i]:offsets[i+1]
    <task>/<split>/hashes.npy         (N,) uint64: a hash of each sentence's tokens
    <task>/<split>/<layer>.npy        (tokens, dim) float16 or float32, one row per token, unpadded

A split is train, devel or test of the task's corpus, or `unlabelled`: the teacher's outputs for the
sentences of `kd cache-logits --unlabelled FILE`, which students given the same file learn from.

Arrays are plain .npy files, so they memory-map: a student reads the rows of its batch, not the
whole cache. The manifest is written last, and the folder is moved into place only when complete,
so an interrupted caching never leaves something that looks like a cache.
"""
from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kd.cache.integrity import check_manifest_data, check_offsets, check_split_files
from kd.data.types import SPLITS, UNLABELLED_SPLIT
from kd.errors import DiskFullError, FieldError, KdError, disk_full_names, is_disk_full
from kd.utils.atomic import atomic_directory

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# task and shared: the BiLSTM's task and shared states; encoder: a transformer's last hidden state.
LAYERS = ("logits", "task", "shared", "marginals", "encoder")
DTYPES = ("float16", "float32")
# A corpus's splits, and the sentences without gold tags some students also learn from.
CACHE_SPLITS = (*SPLITS, UNLABELLED_SPLIT)


def sentence_hashes(sentences: Iterable[Sequence[str]]) -> np.ndarray:
    """A 64-bit hash of each sentence's tokens (unit separators keep `a b` and `ab` apart)."""
    return np.array([int.from_bytes(hashlib.blake2b("\x1f".join(tokens).encode("utf-8"), digest_size=8).digest(),
                                    "little") for tokens in sentences], dtype=np.uint64)


def fingerprint(hashes: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(hashes).tobytes()).hexdigest()


@dataclass
class SplitEntry:
    sentences: int
    tokens: int
    fingerprint: str


@dataclass
class Manifest:
    teacher_runs: list[str]
    ensemble: str  # single, seeds or mixed
    teacher_outputs: list[str]
    tasks: dict[str, list[str]]  # task -> tag list, in logit order
    splits: dict[str, dict[str, SplitEntry]]  # task -> split -> entry
    layers: list[str]
    widths: dict[str, dict[str, int]]  # task -> layer -> values per token
    dtype: str
    teacher_parameters: dict[str, int] = field(default_factory=dict)  # task -> parameters a teacher uses for it
    teacher_kinds: list[str] = field(default_factory=list)  # bilstm or transformer, per teacher run (empty: older caches)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Manifest":
        data = dict(data)
        data["splits"] = {task: {split: SplitEntry(**entry) for split, entry in splits.items()}
                          for task, splits in data["splits"].items()}
        return cls(**data)


def save_array(path: Path, array: np.ndarray, shown_as: Path) -> None:
    """np.save, with a file shorter than the array taken for a full disk (a DiskFullError naming
    `shown_as`) whatever the error says: numpy reports a short write as an OSError without errno
    (`36192 requested and 18400 written`), which an errno check misses."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
    expected = len(header.getvalue()) + array.nbytes  # at least: np.save's header is never shorter

    def short() -> bool:  # a file that was never made (permissions, ...) is not a short write
        return path.is_file() and path.stat().st_size < expected
    try:
        np.save(path, array)
    except OSError as error:
        if is_disk_full(error) or short():
            raise DiskFullError(shown_as) from None
        raise
    if short():
        raise DiskFullError(shown_as)


class CacheWriter:
    """Collects per-token outputs split by split, then commits the folder atomically."""

    def __init__(self, directory: str | Path, dtype: str) -> None:
        if dtype not in DTYPES:
            raise FieldError("dtype", dtype, f"use one of {', '.join(DTYPES)}")
        self.directory = Path(directory)
        self.dtype = dtype
        self._context = atomic_directory(self.directory)
        self.staging = self._context.__enter__()

    def write_split(self, task: str, split: str, sentences: Sequence[Sequence[str]],
                    layers: Mapping[str, np.ndarray]) -> SplitEntry:
        """`layers` maps a layer name to its (tokens, dim) rows in sentence order."""
        folder = self.staging / task / split
        lengths = np.array([len(s) for s in sentences], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        hashes = sentence_hashes(sentences)
        for layer, rows in layers.items():
            if rows.shape[0] != offsets[-1]:
                raise ValueError(f"{layer}: {rows.shape[0]} rows for {offsets[-1]} tokens")
        with disk_full_names(self.staging):
            folder.mkdir(parents=True, exist_ok=True)
            save_array(folder / "offsets.npy", offsets, self.staging)
            save_array(folder / "hashes.npy", hashes, self.staging)
            for layer, rows in layers.items():
                save_array(folder / f"{layer}.npy", rows.astype(self.dtype, copy=False), self.staging)
        return SplitEntry(sentences=len(lengths), tokens=int(offsets[-1]), fingerprint=fingerprint(hashes))

    def commit(self, manifest: Manifest) -> Path:
        with disk_full_names(self.staging):
            (self.staging / MANIFEST).write_text(json.dumps(manifest.to_json(), indent=2))
        self._context.__exit__(None, None, None)
        return self.directory

    def abort(self, error: BaseException) -> None:
        self._context.__exit__(type(error), error, error.__traceback__)


class CachedSplit:
    """Memory-mapped outputs of one task and split, from a folder whose files were checked."""

    def __init__(self, folder: Path, layers: Sequence[str]) -> None:
        self.offsets = np.load(folder / "offsets.npy")
        self.hashes = np.load(folder / "hashes.npy")
        self.layers = {layer: np.load(folder / f"{layer}.npy", mmap_mode="r") for layer in layers}


class CacheReader:
    """A cache folder, checked whole against its manifest when opened (kd.cache.integrity)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.manifest = _read_manifest(self.directory / MANIFEST)
        self._splits: dict[tuple[str, str], CachedSplit] = {}
        for task, splits in self.manifest.splits.items():
            for split, entry in splits.items():
                folder = check_split_files(self.directory, task, split, self.manifest.widths[task],
                                           self.manifest.dtype, entry.sentences, entry.tokens)
                cached = CachedSplit(folder, list(self.manifest.layers))
                check_offsets(folder / "offsets.npy", cached.offsets, entry.tokens)
                self._splits[task, split] = cached

    def split(self, task: str, split: str) -> CachedSplit:
        if task not in self.manifest.tasks:
            raise KdError(f"the cache has no corpus {task!r}; it has {', '.join(self.manifest.tasks)}")
        if split not in self.manifest.splits[task]:
            raise KdError(f"the cache has no {split!r} split of {task}; it has "
                          f"{', '.join(self.manifest.splits[task])}")
        return self._splits[task, split]


def _read_manifest(path: Path) -> Manifest:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise KdError(f"{path.parent}: not a complete kd cache (no {MANIFEST})") from None
    except (OSError, ValueError) as error:
        raise KdError(f"{path}: unreadable manifest ({error})") from None
    if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
        raise KdError(f"{path}: unsupported cache format {data.get('format_version') if isinstance(data, dict) else None}")
    check_manifest_data(path, data, LAYERS, DTYPES, CACHE_SPLITS)
    try:
        return Manifest.from_json(data)
    except (TypeError, AttributeError) as error:  # unknown or missing fields
        raise KdError(f"{path}: malformed manifest ({error})") from None


class CachedTargets:
    """Teacher outputs for a student's training sentences (the concatenation of some splits of
    one task), gathered into padded tensors batch by batch."""

    def __init__(self, reader: CacheReader, task: str, splits: Sequence[str],
                 sentences: Sequence[Sequence[str]], layers: Sequence[str], tags: Sequence[str] = ()) -> None:
        """`tags`: the gold tags of the student's data, which must all be tags the teacher knows."""
        parts = [reader.split(task, split) for split in splits]
        unknown_tags = sorted(set(tags) - set(reader.manifest.tasks[task]))
        if unknown_tags:
            raise KdError(f"the cache's tag set for {task} lacks {', '.join(unknown_tags)}: "
                          f"the cache belongs to other data or another tag scheme")
        missing = [layer for layer in layers if layer not in reader.manifest.layers]
        if missing:
            raise KdError(f"the cache has no {', '.join(missing)} layer(s); it has "
                          f"{', '.join(reader.manifest.layers)} (re-run kd cache-logits --layers ...)")
        expected = np.concatenate([p.hashes for p in parts]) if parts else np.zeros(0, np.uint64)
        actual = sentence_hashes(sentences)
        if len(expected) != len(actual):
            raise KdError(f"the cache holds {len(expected)} sentences of {task} ({', '.join(splits)}), "
                          f"the data has {len(actual)}: the cache was made from other data")
        differing = np.flatnonzero(expected != actual)
        if len(differing):
            raise KdError(f"sentence {int(differing[0]) + 1} of {task} ({', '.join(splits)}) differs from the one "
                          f"the cache was made from ({len(differing)} differ): the cache belongs to other data")
        self.layers = list(layers)
        starts, self.arrays = [], {}
        base = 0
        for part in parts:
            starts.append(part.offsets[:-1] + base)
            base += int(part.offsets[-1])
        self.starts = np.concatenate(starts) if starts else np.zeros(0, np.int64)
        self.lengths = np.array([len(s) for s in sentences], dtype=np.int64)
        # One split: index the memory map directly; several: one map per split, routed by token offset.
        self.parts = parts
        self.part_bounds = np.cumsum([0] + [int(p.offsets[-1]) for p in parts])

    def gather(self, sentence_ids: torch.Tensor, width: int) -> dict[str, torch.Tensor]:
        """{layer: (B, width, dim) float32} for the batch rows `sentence_ids`, zero at padding."""
        ids = sentence_ids.numpy()
        lengths = self.lengths[ids]
        total = int(lengths.sum())
        rows = np.repeat(np.arange(len(ids)), lengths)
        cols = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        source = np.repeat(self.starts[ids], lengths) + cols
        out = {}
        for layer in self.layers:
            dim = self.parts[0].layers[layer].shape[1]
            padded = np.zeros((len(ids), width, dim), dtype=np.float32)
            values = np.empty((total, dim), dtype=np.float32)
            which = np.searchsorted(self.part_bounds, source, side="right") - 1
            for index, part in enumerate(self.parts):
                selected = which == index
                if selected.any():
                    values[selected] = part.layers[layer][source[selected] - self.part_bounds[index]]
            padded[rows, cols] = values
            out[layer] = torch.from_numpy(padded)
        return out

"""The corpora a plan reads: found under its data folder, optionally subsampled into the plan's work
folder (so a scaled plan needs no option of the training library), and fingerprinted, so that a
cell's identity changes when its data does."""
from __future__ import annotations

import hashlib
import json
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kd.data.conll import write_conll
from kd.data.corpora import available_splits, corpus_name, find_local_corpus, load_split, split_path
from kd.data.types import SPLITS
from kd.errors import KdError


@dataclass(frozen=True)
class PlanData:
    data_dir: Path  # where the cells read their corpora (the plan's, or the subsampled copy)
    digests: dict[str, str]  # corpus -> sha256 of its split files
    splits: dict[str, tuple[str, ...]]  # corpus -> the splits it has
    missing: tuple[str, ...] = ()  # known corpora not downloaded yet (`kd plan show` only)


def corpus_dirs(corpora: list[str] | tuple[str, ...], data_dir: Path | None, where: str) -> dict[str, Path]:
    """Each corpus's folder under `data_dir`; `where` names the plan key or option that listed them."""
    if data_dir is None:
        raise KdError(f"{where}: the plan has no data_dir and no --data-dir was given")
    found = {}
    for name in corpora:
        directory = find_local_corpus(name, data_dir)
        if directory is None or split_path(directory, "train") is None:
            raise KdError(f"{where}: {name!r}: no such corpus (a folder with a train split) in {data_dir}")
        found[corpus_name(directory)] = directory
    return found


def prepare_data(corpora: dict[str, Path], subsample: dict[str, int], work_dir: Path) -> PlanData:
    """Without `subsample`, the corpora where they are; with it, a copy of each holding a sample of
    at most `subsample[split]` sentences of each split, written once into `work_dir/data/<caps>`."""
    if not subsample:
        parents = {directory.parent for directory in corpora.values()}
        if len(parents) != 1:
            raise KdError(f"the plan's corpora lie in different folders: {', '.join(sorted(map(str, parents)))}")
        return PlanData(data_dir=parents.pop(), digests={n: corpus_digest(d) for n, d in corpora.items()},
                        splits={n: tuple(available_splits(d)) for n, d in corpora.items()})
    caps = json.dumps(subsample, sort_keys=True)
    root = work_dir / "data" / ("sample-" + "-".join(f"{s}{subsample[s]}" for s in SPLITS if s in subsample))
    digests, splits = {}, {}
    for name, directory in corpora.items():
        target = root / name
        if not (target / "SAMPLE").is_file() or (target / "SAMPLE").read_text() != caps:
            _write_sample(directory, target, subsample, caps)
        digests[name] = corpus_digest(target)
        splits[name] = tuple(available_splits(target))
    return PlanData(data_dir=root, digests=digests, splits=splits)


def sample_sentences(sentences: list, cap: int, corpus: str, split: str) -> list:
    """At most `cap` sentences, drawn with a generator seeded by the corpus and split names (the
    same sample on every machine and Python version), kept in corpus order."""
    if len(sentences) <= cap:
        return sentences
    chosen = sorted(random.Random(f"{corpus}/{split}").sample(range(len(sentences)), cap))
    return [sentences[i] for i in chosen]


def _write_sample(source: Path, target: Path, subsample: dict[str, int], caps: str) -> None:
    """Written into a temporary folder and renamed into place: a killed plan never leaves a half
    corpus, and two plans writing the same sample end with one whole copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for split in available_splits(source):
            sentences = load_split(source, split)
            if split in subsample:
                sentences = sample_sentences(sentences, subsample[split], corpus_name(source), split)
            write_conll([s.tokens for s in sentences], [s.tags for s in sentences], staging / f"{split}.tsv")
        (staging / "SAMPLE").write_text(caps)
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "SAMPLE").is_file():  # another plan did not win the race either
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def corpus_digest(directory: Path) -> str:
    digest = hashlib.sha256()
    for split in available_splits(directory):
        digest.update(split.encode())
        digest.update(split_path(directory, split).read_bytes())
    return digest.hexdigest()[:16]


def token_counts(data_dir: Path, corpus: str, splits: tuple[str, ...] | list[str]) -> int:
    """Tokens of the given splits of a corpus (for cost estimates)."""
    directory = find_local_corpus(corpus, data_dir)
    return sum(len(sentence) for split in splits for sentence in load_split(directory, split))

"""`kd data text`: transfer text for students, one tokenised sentence per line, from raw text files
and other corpora's training splits; deduplicated, with every sentence of the target corpora's devel
and test splits removed, long sentences cut, optionally sampled; and a manifest beside it saying
where every sentence came from and what was removed and why."""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kd.data.corpora import corpus_name, load_split
from kd.data.text import MAX_SENTENCE_TOKENS
from kd.data.text.overlap import MANIFEST_SUFFIX, evaluation_keys, sentence_key
from kd.data.text.readers import TOKENISED, read_records
from kd.data.text.tokenise import sentence_words
from kd.errors import FieldError
from kd.utils.atomic import atomic_file



@dataclass
class TextJob:
    files: Sequence[Path] = ()
    from_corpora: Sequence[Path] = ()  # their training splits are read
    for_corpora: Sequence[Path] = ()  # their devel and test sentences are removed
    exclude_train_of: Sequence[Path] = ()  # their training sentences are removed (the rest of a split)
    out: Path = Path("transfer.txt")
    max_sentences: int | None = None
    seed: int = 1
    max_tokens: int = MAX_SENTENCE_TOKENS

    def __post_init__(self) -> None:
        if not self.files and not self.from_corpora:
            raise FieldError("files", None, "give text files or corpora to read sentences from")
        if self.max_sentences is not None and self.max_sentences < 1:
            raise FieldError("max_sentences", self.max_sentences, "must be at least 1")
        if self.max_tokens < 1:
            raise FieldError("max_tokens", self.max_tokens, "must be at least 1")


@dataclass
class Collected:
    sentences: list[tuple[str, ...]] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)
    cut: int = 0  # sentences longer than max_tokens, cut into pieces

    def add(self, sentences: list[tuple[str, ...]], max_tokens: int) -> int:
        before = len(self.sentences)
        for tokens in sentences:
            if len(tokens) > max_tokens:
                self.cut += 1
            self.sentences.extend(tokens[i:i + max_tokens] for i in range(0, len(tokens), max_tokens))
        return len(self.sentences) - before


def collect(job: TextJob) -> Collected:
    collected = Collected()
    for path in job.files:
        kind, records = read_records(path)
        count = sentences = 0
        for _, text in records:
            count += 1
            words = [tuple(text.split(" "))] if kind in TOKENISED else sentence_words(text)
            sentences += collected.add(words, job.max_tokens)
        collected.sources.append({"file": str(path), "format": kind, "records": count, "sentences": sentences,
                                  "sha256": file_sha256(path)})
    for corpus_dir in job.from_corpora:
        added = collected.add([s.tokens for s in load_split(corpus_dir, "train")], job.max_tokens)
        collected.sources.append({"corpus": corpus_name(corpus_dir), "split": "train", "sentences": added})
    return collected


def build_text(job: TextJob) -> dict[str, Any]:
    """Writes `job.out` and its manifest (`<out>.manifest.json`); returns the manifest."""
    collected = collect(job)
    evaluation = evaluation_keys(job.for_corpora)
    for corpus_dir in job.exclude_train_of:
        for sentence in load_split(corpus_dir, "train"):
            evaluation.setdefault(sentence_key(sentence.tokens), f"{corpus_name(corpus_dir)}/train (labelled)")
    kept: list[tuple[str, ...]] = []
    seen: set[str] = set()
    removed: Counter[str] = Counter()
    for tokens in collected.sentences:
        key = sentence_key(tokens)
        if key in evaluation:
            removed[f"in {evaluation[key]}"] += 1
        elif key in seen:
            removed["duplicate"] += 1
        else:
            seen.add(key)
            kept.append(tokens)
    sampled = None
    if job.max_sentences is not None and len(kept) > job.max_sentences:
        chosen = np.sort(np.random.default_rng(job.seed).choice(len(kept), job.max_sentences, replace=False))
        sampled = {"from": len(kept), "to": job.max_sentences, "seed": job.seed}
        kept = [kept[i] for i in chosen]
    digest = hashlib.sha256()
    with atomic_file(job.out, "w", encoding="utf-8", newline="\n") as stream:
        for tokens in kept:
            line = " ".join(tokens) + "\n"
            stream.write(line)
            digest.update(line.encode("utf-8"))
    manifest = {"out": str(job.out), "sha256": digest.hexdigest(), "sentences": len(kept),
                "tokens": sum(len(s) for s in kept), "sources": collected.sources,
                "evaluation_splits_of": sorted(corpus_name(c) for c in job.for_corpora),
                "read": len(collected.sentences), "removed": dict(sorted(removed.items())),
                "long_sentences_cut": {"count": collected.cut, "max_tokens": job.max_tokens},
                "sampled": sampled}
    with atomic_file(manifest_path(job.out), "w", encoding="utf-8") as stream:
        json.dump(manifest, stream, indent=2)
        stream.write("\n")
    return manifest


def manifest_path(out: str | Path) -> Path:
    return Path(f"{out}{MANIFEST_SUFFIX}")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

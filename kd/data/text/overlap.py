"""Which sentences of a text also occur in a corpus's evaluation splits.

Sentences are compared after removing all whitespace and case-folding, so a sentence tokenised
differently (`IL-2` against `IL - 2`) or cased differently still matches its corpus twin."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kd.data.conll import read_sentences_for_tagging
from kd.data.corpora import corpus_name, load_split, split_path
from kd.errors import FieldError

EVALUATION_SPLITS = ("devel", "test")
MANIFEST_SUFFIX = ".manifest.json"  # `kd data text` writes OUT and OUT.manifest.json


def sentence_key(tokens: Sequence[str]) -> str:
    return "".join("".join(tokens).split()).casefold()


def evaluation_keys(corpus_dirs: Iterable[Path]) -> dict[str, str]:
    """key -> `corpus/split` of the first evaluation sentence with that key."""
    keys: dict[str, str] = {}
    for corpus_dir in corpus_dirs:
        for split in EVALUATION_SPLITS:
            if split_path(corpus_dir, split) is None:
                continue
            for sentence in load_split(corpus_dir, split):
                keys.setdefault(sentence_key(sentence.tokens), f"{corpus_name(corpus_dir)}/{split}")
    return keys


@dataclass(frozen=True)
class Overlap:
    """The sentences of a file that an evaluation split also holds."""

    path: str
    count: int
    first_line: int  # the file line where the first of them starts
    where: str  # `corpus/split` of the first of them


def sentence_start_lines(path: str | Path) -> list[int]:
    """The line where each sentence of a `read_sentences_for_tagging` file starts."""
    lines = Path(path).read_text(encoding="utf-8-sig").split("\n")
    count = len(read_sentences_for_tagging(path))
    one_per_line = [n for n, line in enumerate(lines, start=1) if line.strip()]
    if len(one_per_line) == count:
        return one_per_line
    starts, previous_blank = [], True
    for number, line in enumerate(lines, start=1):
        blank = not line.strip() or line.split()[0] == "-DOCSTART-"
        if not blank and previous_blank:
            starts.append(number)
        previous_blank = blank
    return starts


def find_overlap(path: str | Path, sentences: Sequence[Sequence[str]], corpus_dirs: Iterable[Path]) -> Overlap | None:
    """The sentences of the file at `path` (already read: `sentences`) that occur in a devel or test
    split of the corpora, or None."""
    keys = evaluation_keys(corpus_dirs)
    hits = [index for index, tokens in enumerate(sentences) if sentence_key(tokens) in keys]
    if not hits:
        return None
    starts = sentence_start_lines(path)
    first_line = starts[hits[0]] if hits[0] < len(starts) else hits[0] + 1
    return Overlap(path=str(path), count=len(hits), first_line=first_line,
                   where=keys[sentence_key(sentences[hits[0]])])


def check_eval_overlap(path: str, sentences: Sequence[Sequence[str]], corpus_dirs: Sequence[Path],
                       allowed: bool) -> Overlap | None:
    """The unlabelled sentences that the corpora's devel or test splits also hold: an error unless
    `allowed` (a student would be scored on text it learnt from), else returned for the run's tags."""
    overlap = find_overlap(path, sentences, corpus_dirs)
    if overlap is None or allowed:
        return overlap
    names = ",".join(corpus_name(directory) for directory in corpus_dirs)
    raise FieldError("unlabelled", path, (
        f"{overlap.count} sentence{'s' if overlap.count > 1 else ''} also in a devel or test split, the first "
        f"at line {overlap.first_line} (in {overlap.where}): a student would then be scored on text it learnt "
        f"from; build a clean file with `kd data text {path} --for {names} --out CLEAN.txt`, or set "
        f"allow_eval_overlap (--allow-eval-overlap) for a transductive experiment"))


def text_manifest(path: str) -> Path | None:
    """The `kd data text` manifest beside the file, when there is one."""
    manifest = Path(f"{path}{MANIFEST_SUFFIX}")
    return manifest if manifest.is_file() else None

"""Which sentences of a text also occur in a corpus's evaluation splits.

Sentences are compared after removing all whitespace and case-folding, so a sentence tokenised
differently (`IL-2` against `IL - 2`) or cased differently still matches its corpus twin."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kd.data.conll import read_sentences_for_tagging
from kd.data.corpora import corpus_name, load_split, split_path

EVALUATION_SPLITS = ("devel", "test")


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

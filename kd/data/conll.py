"""Reading and writing CoNLL-style token/tag files.

Corpora arrive in IOB1, IOB2, IOBES (or BILOU) depending on who converted them; everything
downstream (vocabularies, CRF constraints, seqeval scoring) assumes IOB2, so the readers
normalise once, here, and reject malformed files with the offending file and line.
"""
from __future__ import annotations

import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TextIO

from kd.data.types import Sentence
from kd.errors import DataError, KdError, disk_full_names

DOCSTART = "-DOCSTART-"

# BILOU's L/U are the same thing as IOBES's E/S, so they share one code path.
_TO_IOB2_PREFIX = {"B": "B", "I": "I", "E": "I", "L": "I", "S": "B", "U": "B"}

# Looks like a tag in a prediction input file; the one-letter prefix keeps hyphenated words
# such as "IL-2" from being mistaken for labels.
_TAG_LIKE = re.compile(r"^(O|[BIESLU]-\S+)$")


def read_conll(path: str | Path) -> list[Sentence]:
    """Read a CoNLL-style file (token first column, tag last column) into IOB2 sentences.

    Scheme detection is implicit: mapping S/U to B and E/L to I, then turning every I-X that
    starts a chunk into B-X, gives exactly the IOB2 conversion for IOBES, BILOU, IOB1 and
    IOB2 files alike (and repairs stray I-X in sloppy IOB2), so no per-file guess can go wrong.
    Raises DataError for the first malformed line; never returns a partial result.
    """
    lines = _read_lines(path)
    _check_column_counts(path, lines)
    sentences: list[Sentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    tag_lines: list[int] = []
    for number, line in enumerate(lines, start=1):
        columns = _split_columns(line)
        if not columns or columns[0] == DOCSTART:
            if tokens:
                sentences.append(_make_sentence(path, tokens, tags, tag_lines))
                tokens, tags, tag_lines = [], [], []
            continue
        if len(columns) < 2:
            raise DataError(path, "expected token and label separated by a tab or spaces", number)
        tokens.append(columns[0])
        tags.append(columns[-1])
        tag_lines.append(number)
    if tokens:
        sentences.append(_make_sentence(path, tokens, tags, tag_lines))
    if not sentences:
        raise DataError(path, "no sentences found (empty file?)")
    return sentences


def to_iob2(tags: Sequence[str]) -> list[str]:
    """Normalise one sentence's tags (IOB1/IOB2/IOBES/BILOU) to IOB2; tags must be valid."""
    result: list[str] = []
    previous = "O"
    for tag in tags:
        if tag != "O":
            prefix, _, kind = tag.partition("-")
            prefix = _TO_IOB2_PREFIX[prefix]
            if prefix == "I" and previous[2:] != kind:
                prefix = "B"
            tag = f"{prefix}-{kind}"
        result.append(tag)
        previous = tag
    return result


def is_valid_tag(tag: str) -> bool:
    """True for `O` or PREFIX-TYPE with a known prefix and a non-empty type."""
    if tag == "O":
        return True
    prefix, dash, kind = tag.partition("-")
    return bool(dash) and bool(kind) and prefix in _TO_IOB2_PREFIX


def write_conll(
    sentences_tokens: Iterable[Sequence[str]],
    sentences_tags: Iterable[Sequence[str]],
    path_or_stream: str | Path | TextIO,
) -> None:
    """Write `token<TAB>tag` lines with a blank line after each sentence.

    A path is written atomically so an interrupted run never leaves a truncated file that
    a later step would read as a complete (but shorter) corpus or prediction set.
    """
    if hasattr(path_or_stream, "write"):
        _write_sentences(sentences_tokens, sentences_tags, path_or_stream)  # type: ignore[arg-type]
        return
    target = Path(path_or_stream)  # type: ignore[arg-type]
    try:
        handle, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as error:
        raise KdError(f"cannot write {target}: {error.strerror}") from None
    try:
        with disk_full_names(target), os.fdopen(handle, "w", encoding="utf-8", newline="\n") as stream:
            _write_sentences(sentences_tokens, sentences_tags, stream)
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def read_sentences_for_tagging(path: str | Path) -> list[tuple[str, ...]]:
    """Read prediction input, accepting either CoNLL-style or one-sentence-per-line text.

    Users feed the tagger whatever they have: a gold corpus, a token-per-line dump, or
    plain tokenised text. The file is treated as CoNLL (first column = token, blank line
    between sentences, -DOCSTART- skipped, labels ignored and never validated) when
      1. any non-blank line contains a tab, or
      2. more than half of the non-blank lines have 2+ space-separated columns whose last
         column looks like a tag (`O` or a B/I/E/S/L/U-TYPE tag), or
      3. every non-blank line is a single token and the file has at least one blank line
         (one token per line);
    otherwise each non-blank line is one whitespace-tokenised sentence.
    """
    return sentences_of_lines(path, _read_lines(path))


def sentences_of_lines(path: str | Path, lines: list[str]) -> list[tuple[str, ...]]:
    """`read_sentences_for_tagging` of a file already read into lines (`path` names it in errors)."""
    if not _looks_like_conll(lines):
        return _tokenised_lines(path, lines)
    _check_column_counts(path, lines)
    sentences: list[tuple[str, ...]] = []
    tokens: list[str] = []
    for line in lines:
        columns = _split_columns(line)
        if not columns or columns[0] == DOCSTART:
            if tokens:
                sentences.append(tuple(tokens))
                tokens = []
            continue
        tokens.append(columns[0])
    if tokens:
        sentences.append(tuple(tokens))
    if not sentences:
        raise DataError(path, "no sentences found (empty file?)")
    return sentences


def read_unlabelled(path: str | Path) -> list[Sentence]:
    """Sentences without gold tags for a student to learn from its teacher alone, in any format
    `kd predict` reads (CoNLL with its labels ignored, tokens one per line, or one tokenised sentence
    per line): another corpus's train.tsv serves as it is."""
    return [Sentence(tokens=tokens, tags=()) for tokens in read_sentences_for_tagging(path)]


def _tokenised_lines(path: str | Path, lines: list[str]) -> list[tuple[str, ...]]:
    sentences = [tuple(line.split()) for line in lines if line.strip()]
    if not sentences:
        raise DataError(path, "no sentences found (empty file?)")
    return sentences


def _looks_like_conll(lines: list[str]) -> bool:
    non_blank = [line for line in lines if line.strip()]
    if any("\t" in line for line in non_blank):
        return True
    split = [line.split() for line in non_blank]
    tagged = sum(1 for columns in split if len(columns) >= 2 and _TAG_LIKE.match(columns[-1]))
    if tagged * 2 > len(non_blank):
        return True
    return len(non_blank) < len(lines) and all(len(columns) == 1 for columns in split)


def read_file_bytes(path: str | Path) -> bytes:
    """The file's bytes, or a DataError naming it."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except IsADirectoryError:
        raise DataError(path, "is a directory, expected a file") from None
    except OSError as error:
        raise DataError(path, f"cannot read file: {error.strerror}") from None


def decode_utf8(path: str | Path, data: bytes) -> str:
    """The bytes as text without a byte-order mark, or a DataError naming the file and line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise DataError(path, f"not valid UTF-8 (byte 0x{data[error.start]:02x})", line) from None
    return text.removeprefix("\ufeff")


def _read_lines(path: str | Path) -> list[str]:
    """Whole file as lines split on \\n only (str.splitlines would also split on U+2028 etc.)."""
    lines = decode_utf8(path, read_file_bytes(path)).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _split_columns(line: str) -> list[str]:
    """Tab-separated if the line has a tab (tokens may then contain spaces), else whitespace."""
    if "\t" in line:
        stripped = line.strip(" \t\r")
        return stripped.split("\t") if stripped else []
    return line.split()


def _check_column_counts(path: str | Path, lines: list[str]) -> None:
    """Every token line of a file has the same number of columns, counted separately for tab- and
    space-separated lines. A space-separated `New York O` among two-column lines would otherwise
    read as token `New`, an extra column and a label, and `York` would vanish without a word; in a
    tab-separated line the token may contain spaces."""
    counts: dict[bool, list[tuple[int, int]]] = {True: [], False: []}
    for number, line in enumerate(lines, start=1):
        columns = _split_columns(line)
        if columns and columns[0] != DOCSTART:
            counts["\t" in line].append((number, len(columns)))
    for tabbed, rows in counts.items():
        tally = Counter(count for _, count in rows)
        usual = max(tally, key=lambda count: (tally[count], -min(n for n, c in rows if c == count)), default=None)
        for number, count in rows:
            if count != usual:
                separated = "tab" if tabbed else "space"
                raise DataError(path, f"{count} columns where the file's other {separated}-separated lines have "
                                      f"{usual} (a token with spaces needs tab-separated columns)", number)


def _make_sentence(path: str | Path, tokens: list[str], tags: list[str], tag_lines: list[int]) -> Sentence:
    for tag, number in zip(tags, tag_lines):
        if not is_valid_tag(tag):
            raise DataError(path, f"invalid tag {tag!r} (expected O or B-/I-/E-/S-TYPE)", number)
    return Sentence(tokens=tuple(tokens), tags=tuple(to_iob2(tags)))


def _write_sentences(
    sentences_tokens: Iterable[Sequence[str]], sentences_tags: Iterable[Sequence[str]], stream: TextIO
) -> None:
    for tokens, tags in zip(sentences_tokens, sentences_tags, strict=True):
        if len(tokens) != len(tags):
            raise ValueError(f"sentence has {len(tokens)} tokens but {len(tags)} tags")
        stream.write("".join(f"{token}\t{tag}\n" for token, tag in zip(tokens, tags)))
        stream.write("\n")

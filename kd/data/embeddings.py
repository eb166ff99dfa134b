"""Pre-trained word vectors (word2vec text/binary, GloVe) for initialising embedding layers.

Biomedical vector files are large (the PubMed word2vec model is several GB), so the reader
can keep only the words a vocabulary needs, and the binary format is read through mmap.
"""
from __future__ import annotations

import mmap
from collections.abc import Container, Sequence
from pathlib import Path

import numpy as np

from kd.errors import DataError


def read_word_vectors(
    path: str | Path, *, keep: Container[str] | None = None
) -> tuple[list[str], np.ndarray]:
    """Read word2vec text, word2vec binary or GloVe vectors as (words, float32 matrix).

    The format is detected rather than configured because users rarely know which one
    a downloaded file is: a `.bin` suffix, or bytes after the first line that are not
    UTF-8, mean word2vec binary; a first line of two integers means word2vec text; anything
    else is GloVe. With `keep`, only those words are returned (the vector count and
    dimension checks still cover the whole file).
    """
    try:
        with open(path, "rb") as stream:
            header = stream.readline()
            if not header.strip():
                raise DataError(path, "empty file or blank first line", 1)
            shape = _parse_header(header)
            if Path(path).suffix.lower() == ".bin":
                rest = None
            else:
                rest = stream.read()
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except IsADirectoryError:
        raise DataError(path, "is a directory, expected a file") from None
    if rest is not None:
        try:
            text = rest.decode("utf-8")
        except UnicodeDecodeError as error:
            if shape is None:
                line = 2 + rest.count(b"\n", 0, error.start)
                raise DataError(path, "not valid UTF-8 and no word2vec binary header", line) from None
        else:
            return _read_text(path, header.decode("utf-8", errors="replace"), text, shape, keep)
    if shape is None:
        raise DataError(path, "word2vec binary file needs a '<count> <dimension>' first line", 1)
    return _read_binary(path, len(header), shape, keep)


def embedding_matrix(
    words: Sequence[str],
    vectors_words: Sequence[str],
    vectors: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, int]:
    """Rows for `words` taken from pre-trained vectors; returns (matrix, number found).

    Vocabulary words are looked up exactly, then lower-cased (vector files for biomedical
    text are often lower-cased while the corpora are not). Missing words get random normal
    rows with the pre-trained vectors' standard deviation, so they start on the same scale.
    """
    dim = vectors.shape[1]
    exact = {word: row for row, word in enumerate(vectors_words)}
    lower: dict[str, int] = {}
    for row, word in enumerate(vectors_words):
        lower.setdefault(word.lower(), row)
    scale = float(vectors.std()) if vectors.size else 1.0
    matrix = rng.normal(0.0, scale or 1.0, size=(len(words), dim)).astype(np.float32)
    found = 0
    for index, word in enumerate(words):
        row = exact.get(word)
        if row is None:
            row = lower.get(word.lower())
        if row is not None:
            matrix[index] = vectors[row]
            found += 1
    return matrix, found


def _parse_header(line: bytes) -> tuple[int, int] | None:
    parts = line.split()
    if len(parts) != 2 or not all(part.isdigit() for part in parts):
        return None
    count, dim = int(parts[0]), int(parts[1])
    return (count, dim) if dim > 0 else None


def _read_text(
    path: str | Path,
    header: str,
    text: str,
    shape: tuple[int, int] | None,
    keep: Container[str] | None,
) -> tuple[list[str], np.ndarray]:
    lines = text.split("\n")
    first_number = 2
    if shape is None:  # GloVe: the first line is already a vector
        lines.insert(0, header.rstrip("\n"))
        first_number = 1
    dim = shape[1] if shape else len(header.rstrip().split(" ")) - 1
    words: list[str] = []
    rows: list[np.ndarray] = []
    seen = 0
    for number, line in enumerate(lines, start=first_number):
        line = line.rstrip()
        if not line:
            continue
        parts = line.split(" ")
        if len(parts) - 1 != dim:
            raise DataError(path, f"expected {dim} values after the word, found {len(parts) - 1}", number)
        seen += 1
        if keep is not None and parts[0] not in keep:
            continue
        try:
            rows.append(np.array(parts[1:], dtype=np.float32))
        except ValueError:
            raise DataError(path, "bad number in vector", number) from None
        words.append(parts[0])
    _check_count(path, shape, seen)
    if seen == 0:
        raise DataError(path, "no vectors found")
    matrix = np.stack(rows) if rows else np.zeros((0, dim), dtype=np.float32)
    return words, matrix


def _read_binary(
    path: str | Path, offset: int, shape: tuple[int, int], keep: Container[str] | None
) -> tuple[list[str], np.ndarray]:
    count, dim = shape
    record_bytes = 4 * dim
    words: list[str] = []
    rows: list[np.ndarray] = []
    with open(path, "rb") as stream, mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as data:
        position = offset
        for record in range(1, count + 1):
            while position < len(data) and data[position] in b"\n\r":
                position += 1
            space = data.find(b" ", position)
            if space < 0 or space + 1 + record_bytes > len(data):
                raise DataError(path, f"record {record}: truncated (header promises {count} vectors)")
            word = data[position:space].decode("utf-8", errors="replace")
            position = space + 1 + record_bytes
            if keep is not None and word not in keep:
                continue
            words.append(word)
            rows.append(np.frombuffer(data, dtype="<f4", count=dim, offset=space + 1).copy())
        if data[position:].strip():
            raise DataError(path, f"more data after the {count} vectors the header promises")
    matrix = np.stack(rows).astype(np.float32) if rows else np.zeros((0, dim), dtype=np.float32)
    return words, matrix


def _check_count(path: str | Path, shape: tuple[int, int] | None, seen: int) -> None:
    if shape is not None and shape[0] != seen:
        raise DataError(path, f"header promises {shape[0]} vectors, found {seen}", 1)

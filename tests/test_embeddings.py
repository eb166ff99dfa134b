"""Word-vector reading in all three formats, from files written here, and matrix filling."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from kd.data.embeddings import embedding_matrix, read_word_vectors
from kd.errors import DataError

WORDS = ["the", "Protein", "IL-2", "é"]
VECTORS = np.array(
    [[0.5, -1.0, 2.25], [1.0, 0.0, -0.5], [3.5, 1.5, 0.125], [-2.0, 0.75, 1.0]], dtype=np.float32
)


def text_lines() -> list[str]:
    return [f"{w} {' '.join(repr(float(x)) for x in v)}" for w, v in zip(WORDS, VECTORS)]


def write_word2vec_binary(path: Path, words: list[str], vectors: np.ndarray, newline: bool = True) -> Path:
    with open(path, "wb") as stream:
        stream.write(f"{len(words)} {vectors.shape[1]}\n".encode())
        for word, vector in zip(words, vectors):
            stream.write(word.encode("utf-8") + b" " + struct.pack(f"<{len(vector)}f", *vector))
            if newline:
                stream.write(b"\n")
    return path


def assert_round_trip(result: tuple[list[str], np.ndarray]) -> None:
    words, vectors = result
    assert words == WORDS
    assert vectors.dtype == np.float32
    np.testing.assert_array_equal(vectors, VECTORS)


def test_word2vec_text(tmp_path: Path) -> None:
    path = tmp_path / "vec.txt"
    path.write_text("4 3\n" + "\n".join(line + " " for line in text_lines()) + "\n", encoding="utf-8")
    assert_round_trip(read_word_vectors(path))


def test_glove_text(tmp_path: Path) -> None:
    path = tmp_path / "glove.txt"
    path.write_text("\n".join(text_lines()) + "\n", encoding="utf-8")
    assert_round_trip(read_word_vectors(path))


@pytest.mark.parametrize(("suffix", "newline"), [(".bin", True), (".bin", False), (".vec", True)])
def test_word2vec_binary(tmp_path: Path, suffix: str, newline: bool) -> None:
    path = write_word2vec_binary(tmp_path / f"vec{suffix}", WORDS, VECTORS, newline)
    assert_round_trip(read_word_vectors(path))


def test_keep_restricts_words(tmp_path: Path) -> None:
    path = write_word2vec_binary(tmp_path / "vec.bin", WORDS, VECTORS)
    words, vectors = read_word_vectors(path, keep={"IL-2", "the"})
    assert words == ["the", "IL-2"]
    np.testing.assert_array_equal(vectors, VECTORS[[0, 2]])


def test_inconsistent_dimension_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "glove.txt"
    path.write_text("a 1 2 3\nb 1 2\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_word_vectors(path)
    assert str(info.value).startswith(f"{path}:2: expected 3 values")


def test_bad_float_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "vec.txt"
    path.write_text("2 2\na 1 2\nb 1 x\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_word_vectors(path)
    assert info.value.line == 3 and "bad number" in str(info.value)


def test_header_count_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "vec.txt"
    path.write_text("3 2\na 1 2\nb 1 2\n", encoding="utf-8")
    with pytest.raises(DataError, match="promises 3 vectors, found 2"):
        read_word_vectors(path)


def test_truncated_binary_names_the_record(tmp_path: Path) -> None:
    path = write_word2vec_binary(tmp_path / "vec.bin", WORDS, VECTORS)
    path.write_bytes(path.read_bytes()[:-6])
    with pytest.raises(DataError, match="record 4: truncated"):
        read_word_vectors(path)


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        read_word_vectors(tmp_path / "absent.txt")
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="empty"):
        read_word_vectors(tmp_path / "empty.txt")


def test_embedding_matrix_exact_then_lowercase_then_random() -> None:
    vocab = ["<pad>", "the", "protein", "IL-2", "unknownword"]
    matrix, found = embedding_matrix(vocab, WORDS, VECTORS, np.random.default_rng(0))
    assert matrix.shape == (5, 3) and matrix.dtype == np.float32
    assert found == 3
    np.testing.assert_array_equal(matrix[1], VECTORS[0])
    np.testing.assert_array_equal(matrix[2], VECTORS[1])  # "protein" -> "Protein" via lower-case
    np.testing.assert_array_equal(matrix[3], VECTORS[2])
    assert not any(np.array_equal(matrix[4], v) for v in VECTORS)
    again, _ = embedding_matrix(vocab, WORDS, VECTORS, np.random.default_rng(0))
    np.testing.assert_array_equal(matrix, again)  # reproducible given the rng

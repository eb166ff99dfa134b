"""CoNLL reading/writing: scheme normalisation against hand-written IOB2, and every error case."""
from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

from kd.data.conll import read_conll, read_sentences_for_tagging, write_conll
from kd.data.types import Sentence
from kd.errors import DataError, KdError


def write(tmp_path: Path, text: str | bytes, name: str = "data.tsv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def test_iob2_file_is_read_unchanged(tmp_path: Path) -> None:
    path = write(tmp_path, "Aspirin\tB-Chem\ncauses\tO\n\nlung\tB-Dis\ncancer\tI-Dis\n")
    assert read_conll(path) == [
        Sentence(("Aspirin", "causes"), ("B-Chem", "O")),
        Sentence(("lung", "cancer"), ("B-Dis", "I-Dis")),
    ]


def test_iob1_is_converted_to_iob2(tmp_path: Path) -> None:
    # IOB1: I- everywhere, B- only where a chunk directly follows one of the same type.
    text = "a\tI-G\nb\tI-G\nc\tB-G\nd\tO\ne\tI-G\nf\tI-D\ng\tI-D\n\nh\tI-D\n"
    expected = [
        ("B-G", "I-G", "B-G", "O", "B-G", "B-D", "I-D"),
        ("B-D",),
    ]
    assert [s.tags for s in read_conll(write(tmp_path, text))] == expected


def test_iobes_is_converted_to_iob2(tmp_path: Path) -> None:
    text = "a\tS-G\nb\tB-G\nc\tI-G\nd\tE-G\ne\tO\nf\tB-D\ng\tE-D\nh\tS-D\n"
    expected = ("B-G", "B-G", "I-G", "I-G", "O", "B-D", "I-D", "B-D")
    assert read_conll(write(tmp_path, text))[0].tags == expected


def test_bilou_is_converted_to_iob2(tmp_path: Path) -> None:
    text = "a\tU-G\nb\tB-G\nc\tL-G\nd\tO\n"
    assert read_conll(write(tmp_path, text))[0].tags == ("B-G", "B-G", "I-G", "O")


def test_columns_first_token_last_label_and_space_separation(tmp_path: Path) -> None:
    text = "IL-2 NN x O\nreceptor NN x B-P\n\nfoo bar\tNN\tO\n"
    assert read_conll(write(tmp_path, text)) == [
        Sentence(("IL-2", "receptor"), ("O", "B-P")),
        Sentence(("foo bar",), ("O",)),
    ]


def test_docstart_whitespace_lines_crlf_and_missing_final_blank(tmp_path: Path) -> None:
    text = "-DOCSTART-\tO\n\na\tO\r\nb\tB-X\r\n-DOCSTART- -X- O\nc\tO\n  \t \nd\tI-X"
    assert read_conll(write(tmp_path, text)) == [
        Sentence(("a", "b"), ("O", "B-X")),
        Sentence(("c",), ("O",)),
        Sentence(("d",), ("B-X",)),
    ]


def test_tokens_with_unicode_line_separators_are_not_split(tmp_path: Path) -> None:
    path = write(tmp_path, "a\u2028b\tO\nc\x85\tO\n")
    assert read_conll(path)[0].tokens == ("a\u2028b", "c\x85")


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("a\tO\nb\n", 2, "expected token and label"),
        ("a\tO\n\nb\tB-\n", 3, "invalid tag 'B-'"),
        ("a\tO\nb\tX-Gene\n", 2, "invalid tag 'X-Gene'"),
        ("a\tO\nb\tGene\n", 2, "invalid tag 'Gene'"),
        ("a\to\n", 1, "invalid tag 'o'"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(DataError) as info:
        read_conll(path)
    assert info.value.line == line
    assert str(info.value).startswith(f"{path}:{line}: ")
    assert fragment in str(info.value)


def test_non_utf8_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, b"a\tO\n\nb\tO\nc\xff\tO\n")
    with pytest.raises(DataError) as info:
        read_conll(path)
    assert info.value.line == 4
    assert "UTF-8" in str(info.value)


@pytest.mark.parametrize("text", ["", "\n\n  \n", "-DOCSTART-\tO\n\n"])
def test_empty_file_is_an_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(DataError, match="no sentences"):
        read_conll(write(tmp_path, text))


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found") as info:
        read_conll(tmp_path / "absent.tsv")
    assert str(tmp_path / "absent.tsv") in str(info.value)


def test_write_then_read_round_trip(tmp_path: Path) -> None:
    tokens = [("Aspirin", "causes", "cancer"), ("ok",)]
    tags = [("B-Chem", "O", "B-Dis"), ("O",)]
    path = tmp_path / "out.tsv"
    write_conll(tokens, tags, path)
    assert path.read_text(encoding="utf-8") == "Aspirin\tB-Chem\ncauses\tO\ncancer\tB-Dis\n\nok\tO\n\n"
    assert [(s.tokens, s.tags) for s in read_conll(path)] == list(zip(tokens, tags))
    assert [p.name for p in tmp_path.iterdir()] == ["out.tsv"]  # no temp file left behind


def test_write_to_stream_and_failed_write_keeps_old_file(tmp_path: Path) -> None:
    stream = io.StringIO()
    write_conll([("a",)], [("O",)], stream)
    assert stream.getvalue() == "a\tO\n\n"

    path = tmp_path / "out.tsv"
    path.write_text("old\n", encoding="utf-8")
    with pytest.raises(ValueError):
        write_conll([("a", "b")], [("O",)], path)
    assert path.read_text(encoding="utf-8") == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.tsv"]


def test_plain_tokenised_text_is_one_sentence_per_line(tmp_path: Path) -> None:
    path = write(tmp_path, "The  cat sat .\n\n  \nIL-2 binds\n")
    assert read_sentences_for_tagging(path) == [("The", "cat", "sat", "."), ("IL-2", "binds")]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # plain text, one sentence per line (hyphenated last words are not tags)
        ("The cat sat .\nIL-2 binds IL-2R\n", [("The", "cat", "sat", "."), ("IL-2", "binds", "IL-2R")]),
        # CoNLL with tabs, labels not validated
        ("a\tO\nb\tweird\n\nc\n", [("a", "b"), ("c",)]),
        # CoNLL with spaces and tag-like last column
        ("a O\nb B-X\n\n-DOCSTART- O\nc I-X\n", [("a", "b"), ("c",)]),
        # one token per line
        ("a\nb\n\nc\n", [("a", "b"), ("c",)]),
        # single-word sentences without blank lines stay sentences
        ("Hello\nWorld\n", [("Hello",), ("World",)]),
    ],
)
def test_read_sentences_for_tagging_detects_format(tmp_path: Path, text: str, expected: list) -> None:
    assert read_sentences_for_tagging(write(tmp_path, text)) == expected


def test_large_file_reads_quickly(tmp_path: Path) -> None:
    block = "".join(f"tok{i}\t{'B-X' if i % 7 == 0 else 'O'}\n" for i in range(20)) + "\n"
    path = write(tmp_path, block * 6700)  # ~140k lines
    start = time.perf_counter()
    sentences = read_conll(path)
    elapsed = time.perf_counter() - start
    assert len(sentences) == 6700
    assert elapsed < 1.0


def test_write_into_missing_folder_is_a_kd_error(tmp_path: Path) -> None:
    with pytest.raises(KdError, match="cannot write"):
        write_conll([("a",)], [("O",)], tmp_path / "missing" / "out.tsv")

"""`kd data` commands through click's CliRunner: output, JSON, and one-line errors with exit code 2."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import kd.cli.data_cmd as data_cmd
from kd.cli.data_cmd import data

TRAIN = "Aspirin\tB-Chemical\ncauses\tO\nasthma\tB-Disease\n\nok\tO\n"


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()  # click >= 8.2 keeps stderr separate


def make_corpus(root: Path, name: str, train: str = TRAIN) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "train.tsv").write_text(train, encoding="utf-8")
    (folder / "devel.tsv").write_text("a\tO\n", encoding="utf-8")
    (folder / "test.tsv").write_text("b\tB-Disease\n", encoding="utf-8")
    return folder


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def test_list_marks_local_corpora(runner: CliRunner, tmp_path: Path) -> None:
    make_corpus(tmp_path, "ncbi-disease-IOB")
    result = runner.invoke(data, ["list", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert len(rows) == 15
    assert "yes" in rows["NCBI-disease"] and str(tmp_path) in rows["NCBI-disease"]
    assert " no " in rows["BC2GM"]


def test_list_reads_data_dir_from_environment(runner: CliRunner, tmp_path: Path) -> None:
    make_corpus(tmp_path, "BC2GM")
    result = runner.invoke(data, ["list"], env={"KD_DATA_DIR": str(tmp_path)})
    assert result.exit_code == 0
    assert str(tmp_path / "BC2GM") in result.stdout


def test_check_table_and_json(runner: CliRunner, tmp_path: Path) -> None:
    make_corpus(tmp_path, "BC5CDR")
    result = runner.invoke(data, ["check", "bc5cdr", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.stderr
    train_row = next(line for line in result.stdout.splitlines() if line.startswith("train"))
    assert train_row.split()[:4] == ["train", "2", "4", "2"]
    assert "Chemical=1" in train_row and "Disease=1" in train_row

    result = runner.invoke(data, ["check", str(tmp_path / "BC5CDR"), "--json"])
    assert result.exit_code == 0
    stats = json.loads(result.stdout)
    assert stats["splits"]["train"]["entities"] == {"Chemical": 1, "Disease": 1}
    assert stats["splits"]["test"] == {
        "sentences": 1,
        "tokens": 1,
        "entity_types": ["Disease"],
        "entities": {"Disease": 1},
    }


@pytest.mark.parametrize(
    ("train", "line", "fragment"),
    [
        ("a\tO\n\nb\n", 3, "expected token and label"),
        ("a\tO\nb\tB-\n", 2, "invalid tag 'B-'"),
        ("a\tO\nb\tI-X\nc\tQ-X\n", 3, "invalid tag 'Q-X'"),
    ],
)
def test_check_bad_file_gives_file_and_line(
    runner: CliRunner, tmp_path: Path, train: str, line: int, fragment: str
) -> None:
    folder = make_corpus(tmp_path, "Bad", train)
    result = runner.invoke(data, ["check", str(folder)])
    assert_one_line_error(result, f"{folder / 'train.tsv'}:{line}:", fragment)


def test_check_non_utf8_gives_file_and_line(runner: CliRunner, tmp_path: Path) -> None:
    folder = make_corpus(tmp_path, "Bad")
    (folder / "devel.tsv").write_bytes(b"a\tO\n\n\xe9\tO\n")
    result = runner.invoke(data, ["check", str(folder)])
    assert_one_line_error(result, f"{folder / 'devel.tsv'}:3:", "UTF-8")


def test_check_unknown_corpus(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(data, ["check", "BC2GM", "--data-dir", str(tmp_path)])
    assert_one_line_error(result, "BC2GM", "kd data download")


def test_check_reports_checksum_mismatch(runner: CliRunner, tmp_path: Path) -> None:
    folder = make_corpus(tmp_path, "C")
    (folder / "SHA256SUMS").write_text(f"{'0' * 64}  train.tsv\n", encoding="utf-8")
    result = runner.invoke(data, ["check", str(folder)])
    assert_one_line_error(result, "train.tsv: checksum mismatch")


def test_download_with_fake_fetch(runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_download(names, dest, *, fetch=None):
        return [make_corpus(dest, name) for name in names]

    monkeypatch.setattr(data_cmd, "download_corpora", fake_download)
    result = runner.invoke(data, ["download", "ncbi-disease", "--dest", str(tmp_path)])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.split() == ["NCBI-disease", str(tmp_path / "NCBI-disease")]


def test_download_errors(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(data, ["download", "nope", "--dest", str(tmp_path)])
    assert_one_line_error(result, "unknown corpus 'nope'", "NCBI-disease")
    result = runner.invoke(data, ["download", "--dest", str(tmp_path)])
    assert result.exit_code == 2
    result = runner.invoke(data, ["download", "BC2GM", "--all", "--dest", str(tmp_path)])
    assert result.exit_code == 2

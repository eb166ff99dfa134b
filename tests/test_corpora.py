"""Corpus registry, lookup, offline download and statistics."""
from __future__ import annotations

import hashlib
import urllib.error
from pathlib import Path

import pytest

from kd.data.corpora import (
    REGISTRY,
    available_splits,
    corpus_statistics,
    download_corpora,
    get_corpus,
    load_split,
    resolve_corpus_dir,
    verify_checksums,
)
from kd.data.types import SPLITS
from kd.errors import KdError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"

SPLIT_TEXT = {
    "train": "Aspirin\tB-Chemical\ncauses\tO\nasthma\tB-Disease\n\nok\tO\n",
    "devel": "lung\tB-Disease\ncancer\tI-Disease\n",
    "test": "x\tO\n\ny\tB-Chemical\n\nz\tO\n",
}


def make_corpus(root: Path, name: str = "Toy") -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    for split, text in SPLIT_TEXT.items():
        (folder / f"{split}.tsv").write_text(text, encoding="utf-8")
    return folder


def fake_fetch(url: str) -> bytes:
    split = url.rsplit("/", 1)[1].removesuffix(".tsv")
    return SPLIT_TEXT[split].encode("utf-8")


def test_registry_has_the_15_corpora_and_lookup_ignores_case() -> None:
    assert len(REGISTRY) == 15
    assert get_corpus("ncbi-DISEASE").name == "NCBI-disease"
    assert get_corpus("LINNAEUS").source_folder == "linnaeus-IOB"
    url = get_corpus("NCBI-disease").url("train")
    assert url.startswith("https://raw.githubusercontent.com/cambridgeltl/MTL-Bioinformatics-2016/")
    assert url.endswith("/data/NCBI-disease-IOB/train.tsv")


def test_unknown_corpus_lists_valid_names() -> None:
    with pytest.raises(KdError, match="NCBI-disease"):
        get_corpus("nope")


def test_resolve_by_path_by_name_and_by_iob_suffix(tmp_path: Path) -> None:
    folder = make_corpus(tmp_path, "NCBI-disease-IOB")
    assert resolve_corpus_dir(str(folder), None) == folder
    assert resolve_corpus_dir("ncbi-disease", tmp_path) == folder
    exact = make_corpus(tmp_path, "ncbi-disease")
    assert resolve_corpus_dir("NCBI-disease", tmp_path) == exact


def test_resolve_failure_says_what_was_tried(tmp_path: Path) -> None:
    with pytest.raises(KdError) as info:
        resolve_corpus_dir("BC2GM", tmp_path)
    message = str(info.value)
    assert "BC2GM-IOB" in message and str(tmp_path) in message and "kd data download" in message
    with pytest.raises(KdError, match="KD_DATA_DIR"):
        resolve_corpus_dir("BC2GM", None)


def test_load_split_and_available_splits(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "train.conll").write_text("a\tI-X\n", encoding="utf-8")
    (folder / "test.iob2").write_text("b\tO\n", encoding="utf-8")
    assert available_splits(folder) == ["train", "test"]
    assert load_split(folder, "train")[0].tags == ("B-X",)
    with pytest.raises(KdError, match="devel"):
        load_split(folder, "devel")


def test_corpus_statistics_counts_sentences_tokens_and_entities(tmp_path: Path) -> None:
    stats = corpus_statistics(make_corpus(tmp_path))
    assert stats["splits"]["train"] == {
        "sentences": 2,
        "tokens": 4,
        "entity_types": ["Chemical", "Disease"],
        "entities": {"Chemical": 1, "Disease": 1},
    }
    assert stats["splits"]["devel"]["entities"] == {"Disease": 1}
    assert stats["splits"]["test"]["sentences"] == 3


def test_download_writes_splits_sums_and_source(tmp_path: Path) -> None:
    requested: list[str] = []

    def fetch(url: str) -> bytes:
        requested.append(url)
        return fake_fetch(url)

    dest = tmp_path / "data"
    (folder,) = download_corpora(["ncbi-disease"], dest, fetch=fetch)
    assert folder == dest / "NCBI-disease"
    assert sorted(p.name for p in dest.iterdir()) == ["NCBI-disease"]
    assert sorted(p.name for p in folder.iterdir()) == ["SHA256SUMS", "SOURCE", "devel.tsv", "test.tsv", "train.tsv"]
    for split in SPLITS:
        assert (folder / f"{split}.tsv").read_text(encoding="utf-8") == SPLIT_TEXT[split]
    expected_sums = "".join(
        f"{hashlib.sha256(SPLIT_TEXT[s].encode()).hexdigest()}  {s}.tsv\n" for s in SPLITS
    )
    assert (folder / "SHA256SUMS").read_text(encoding="utf-8") == expected_sums
    assert verify_checksums(folder / "SHA256SUMS") == []
    source = (folder / "SOURCE").read_text(encoding="utf-8")
    assert all(url in source for url in requested)
    assert [u.rsplit("/", 2)[1] for u in requested] == ["NCBI-disease-IOB"] * 3


def test_download_replaces_an_existing_corpus(tmp_path: Path) -> None:
    old = make_corpus(tmp_path, "AnatEM")
    (old / "stale.txt").write_text("x", encoding="utf-8")
    download_corpora(["AnatEM"], tmp_path, fetch=fake_fetch)
    assert not (old / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["AnatEM"]


def test_failing_fetch_leaves_nothing_in_dest(tmp_path: Path) -> None:
    def fetch(url: str) -> bytes:
        if url.endswith("test.tsv"):
            raise urllib.error.URLError("no network")
        return fake_fetch(url)

    dest = tmp_path / "data"
    with pytest.raises(KdError) as info:
        download_corpora(["BC2GM"], dest, fetch=fetch)
    assert "BC2GM-IOB/test.tsv" in str(info.value)
    assert list(dest.iterdir()) == []


def test_unparseable_download_is_rejected_and_not_installed(tmp_path: Path) -> None:
    def fetch(url: str) -> bytes:
        return b"a\tO\nbroken\n" if url.endswith("devel.tsv") else fake_fetch(url)

    with pytest.raises(KdError, match=r"devel\.tsv.*line 2"):
        download_corpora(["CRAFT"], tmp_path, fetch=fetch)
    assert list(tmp_path.iterdir()) == []


def test_unknown_name_fails_before_fetching(tmp_path: Path) -> None:
    def fetch(url: str) -> bytes:
        raise AssertionError("must not fetch")

    with pytest.raises(KdError, match="known corpora"):
        download_corpora(["NCBI-disease", "nope"], tmp_path, fetch=fetch)


def test_verify_checksums_reports_mismatch_and_missing(tmp_path: Path) -> None:
    folder = make_corpus(tmp_path)
    (folder / "SHA256SUMS").write_text(
        f"{'0' * 64}  train.tsv\n"
        f"{hashlib.sha256(SPLIT_TEXT['test'].encode()).hexdigest()}  test.tsv\n"
        f"{'0' * 64}  gone.tsv\n",
        encoding="utf-8",
    )
    assert verify_checksums(folder / "SHA256SUMS") == ["train.tsv: checksum mismatch", "gone.tsv: missing"]


@pytest.mark.parametrize("name", ["../outside.tsv", "/etc/hostname", "link.tsv"])
def test_a_checksum_line_leading_outside_the_corpus_is_refused_naming_its_line(tmp_path: Path, name: str) -> None:
    folder = make_corpus(tmp_path)
    (tmp_path / "outside.tsv").write_text("secret\n")
    (folder / "link.tsv").symlink_to(tmp_path / "outside.tsv")
    (folder / "SHA256SUMS").write_text(f"{'0' * 64}  train.tsv\n{'0' * 64}  {name}\n", encoding="utf-8")
    with pytest.raises(KdError, match=rf"^{folder / 'SHA256SUMS'}:2: {name}: leads outside {folder}$"):
        verify_checksums(folder / "SHA256SUMS")


def count_blocks(path: Path) -> int:
    blocks, inside = 0, False
    for line in path.read_text(encoding="utf-8").split("\n"):
        if line.strip():
            blocks += not inside
            inside = True
        else:
            inside = False
    return blocks


@pytest.mark.skipif(not (SHARED / "NCBI-disease").is_dir(), reason="shared datasets not present")
def test_shared_ncbi_disease_matches_sums_and_block_counts() -> None:
    assert verify_checksums(SHARED / "SHA256SUMS") == []
    corpus = resolve_corpus_dir("ncbi-disease", SHARED)
    stats = corpus_statistics(corpus)
    assert list(stats["splits"]) == list(SPLITS)
    for split in SPLITS:
        assert stats["splits"][split]["sentences"] == count_blocks(corpus / f"{split}.tsv")
        assert stats["splits"][split]["entity_types"] == ["Disease"]

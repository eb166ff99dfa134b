"""The 15 biomedical NER corpora of Crichton et al. (2017): where they come from and where they live.

The corpora are fetched from one pinned commit of the upstream repository so that every
experiment trains and scores on byte-identical files; SHA256SUMS and SOURCE files written
next to them make that checkable later.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tempfile
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kd.data.conll import read_conll
from kd.data.types import SPLITS, Sentence
from kd.errors import DataError, KdError

UPSTREAM_REPOSITORY = "cambridgeltl/MTL-Bioinformatics-2016"
# The commit the shared copies were taken from (shared/README.md). Only the abbreviated
# hash is known; GitHub resolves abbreviated commit hashes in raw URLs.
UPSTREAM_COMMIT = "df0df02"
SPLIT_SUFFIXES = (".tsv", ".conll", ".txt", ".iob2")
CHECKSUM_FILE = "SHA256SUMS"
SOURCE_FILE = "SOURCE"

Fetch = Callable[[str], bytes]


@dataclass(frozen=True)
class CorpusInfo:
    """One corpus: its canonical name, its folder upstream, what it annotates, its licence."""

    name: str
    source_folder: str
    entity_types: str
    licence: str

    def url(self, split: str, commit: str = UPSTREAM_COMMIT) -> str:
        """Raw download URL of one split at the pinned commit."""
        return (
            f"https://raw.githubusercontent.com/{UPSTREAM_REPOSITORY}/{commit}/"
            f"data/{self.source_folder}/{split}.tsv"
        )


_CC_BY = "CC BY 4.0 (upstream repository); see the original corpus licence"


def _registry() -> dict[str, CorpusInfo]:
    entries = [
        CorpusInfo("AnatEM", "AnatEM-IOB", "Anatomy", _CC_BY),
        CorpusInfo("BC2GM", "BC2GM-IOB", "GENE (gene/protein mentions)", _CC_BY),
        CorpusInfo(
            "BC4CHEMD",
            "BC4CHEMD",
            "Chemical",
            "redistribution status unclear upstream; original at biocreative.org",
        ),
        CorpusInfo("BC5CDR", "BC5CDR-IOB", "Chemical, Disease", _CC_BY),
        CorpusInfo("BioNLP09", "BioNLP09-IOB", "Protein", _CC_BY),
        CorpusInfo("BioNLP11EPI", "BioNLP11EPI-IOB", "Protein", _CC_BY),
        CorpusInfo("BioNLP11ID", "BioNLP11ID-IOB", "Protein, Organism, Chemical, Regulon-operon", _CC_BY),
        CorpusInfo(
            "BioNLP13CG",
            "BioNLP13CG-IOB",
            "16 cancer-genetics types (Gene_or_gene_product, Cell, Cancer, Simple_chemical, ...)",
            _CC_BY,
        ),
        CorpusInfo("BioNLP13GE", "BioNLP13GE-IOB", "Protein", _CC_BY),
        CorpusInfo(
            "BioNLP13PC",
            "BioNLP13PC-IOB",
            "Gene_or_gene_product, Simple_chemical, Complex, Cellular_component",
            _CC_BY,
        ),
        CorpusInfo("CRAFT", "CRAFT-IOB", "SO, GGP, Taxon, CHEBI, CL, GO", _CC_BY),
        CorpusInfo("Ex-PTM", "Ex-PTM-IOB", "Protein", _CC_BY),
        CorpusInfo("JNLPBA", "JNLPBA", "protein, DNA, RNA, cell_type, cell_line", _CC_BY),
        CorpusInfo("linnaeus", "linnaeus-IOB", "Species", _CC_BY),
        CorpusInfo("NCBI-disease", "NCBI-disease-IOB", "Disease", _CC_BY),
    ]
    return {entry.name: entry for entry in entries}


REGISTRY: dict[str, CorpusInfo] = _registry()


def get_corpus(name: str) -> CorpusInfo:
    """Registry entry by case-insensitive name; KdError listing the valid names otherwise."""
    for key, info in REGISTRY.items():
        if key.lower() == name.lower():
            return info
    raise KdError(f"unknown corpus {name!r}; known corpora: {', '.join(REGISTRY)}")


def find_local_corpus(name: str, data_dir: Path | None) -> Path | None:
    """The folder `<name>` or `<name>-IOB` (any case) inside data_dir, if there is one."""
    if data_dir is None or not data_dir.is_dir():
        return None
    wanted = {name.lower(), f"{name.lower()}-iob"}
    matches = sorted(entry for entry in data_dir.iterdir() if entry.is_dir() and entry.name.lower() in wanted)
    # Prefer the exact name over the -IOB variant when both exist.
    matches.sort(key=lambda entry: entry.name.lower() != name.lower())
    return matches[0] if matches else None


def resolve_corpus_dir(name_or_path: str, data_dir: Path | None) -> Path:
    """Turn a corpus name or a directory path into the directory holding its split files."""
    candidate = Path(name_or_path)
    if candidate.is_dir():
        return candidate
    found = find_local_corpus(name_or_path, data_dir)
    if found is not None:
        return found
    if data_dir is None:
        where = "no data directory was given (use --data-dir or set KD_DATA_DIR)"
    else:
        where = f"no folder {name_or_path!r} or {name_or_path + '-IOB'!r} in data directory {str(data_dir)!r}"
    known = [name for name in REGISTRY if name.lower() == name_or_path.lower()]
    hint = f"to fetch it run `kd data download {known[0]} --dest DIR`" if known else (
        f"known corpora: {', '.join(REGISTRY)}"
    )
    raise KdError(f"corpus {name_or_path!r} not found: it is not a directory, and {where}; {hint}")


def discover_corpora(data_dir: Path | None) -> list[Path]:
    """Every folder directly under data_dir that holds a train split, sorted by name."""
    if data_dir is None or not data_dir.is_dir():
        raise KdError("`all` corpora needs a data directory (use --data-dir or set KD_DATA_DIR)")
    found = sorted((entry for entry in data_dir.iterdir() if entry.is_dir() and split_path(entry, "train")),
                   key=lambda entry: entry.name.lower())
    if not found:
        raise KdError(f"{data_dir}: no corpus folders with a train split")
    return found


def corpus_name(corpus_dir: Path) -> str:
    """The task name of a corpus folder: its name, without the upstream `-IOB` suffix."""
    name = corpus_dir.name
    return name[:-4] if name.upper().endswith("-IOB") and len(name) > 4 else name


def split_path(corpus_dir: Path, split: str) -> Path | None:
    """The file holding one split (`<split>.tsv`, `.conll`, `.txt` or `.iob2`), if any. A split name
    taken by something that is not a file (a folder `devel.tsv`) is an error, not a missing split."""
    for suffix in SPLIT_SUFFIXES:
        path = corpus_dir / f"{split}{suffix}"
        if path.is_file():
            return path
        if path.exists():
            raise DataError(path, "is not a file")
    return None


def available_splits(corpus_dir: Path) -> list[str]:
    """The standard splits present in corpus_dir, in train/devel/test order."""
    return [split for split in SPLITS if split_path(corpus_dir, split) is not None]


def load_split(corpus_dir: Path, split: str) -> list[Sentence]:
    """Read one split of a corpus as IOB2 sentences."""
    path = split_path(corpus_dir, split)
    if path is None:
        tried = ", ".join(f"{split}{suffix}" for suffix in SPLIT_SUFFIXES)
        raise KdError(f"{corpus_dir}: no {split!r} split (looked for {tried})")
    return read_conll(path)


def urllib_fetch(url: str) -> bytes:
    """Default fetcher: plain HTTPS GET with a timeout, so a dead network fails rather than hangs."""
    with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 (fixed https URLs)
        return response.read()


def download_corpora(names: list[str], dest: Path, *, fetch: Fetch = urllib_fetch) -> list[Path]:
    """Download each named corpus into `dest/<name>/` and return the corpus folders.

    Every split is parsed before anything is moved into place, and each corpus is
    assembled in a temporary folder and renamed in one step, so dest only ever holds
    complete, readable corpora with their SHA256SUMS and SOURCE files.
    """
    infos = [get_corpus(name) for name in names]
    dest.mkdir(parents=True, exist_ok=True)
    return [_download_one(info, dest, fetch) for info in infos]


def _download_one(info: CorpusInfo, dest: Path, fetch: Fetch) -> Path:
    staging = Path(tempfile.mkdtemp(dir=dest, prefix=f".{info.name}.partial-"))
    try:
        sums = []
        for split in SPLITS:
            url = info.url(split)
            data = _fetch(fetch, url)
            path = staging / f"{split}.tsv"
            path.write_bytes(data)
            _check_parses(path, url)
            sums.append(f"{hashlib.sha256(data).hexdigest()}  {path.name}\n")
        (staging / CHECKSUM_FILE).write_text("".join(sums), encoding="utf-8")
        (staging / SOURCE_FILE).write_text(_source_text(info), encoding="utf-8")
        target = dest / info.name
        _replace_dir(staging, target)
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _fetch(fetch: Fetch, url: str) -> bytes:
    try:
        data = fetch(url)
    except (OSError, http.client.HTTPException) as error:
        raise KdError(f"download failed: {url}: {error}") from None
    if data.startswith(b"version https://git-lfs"):
        raise KdError(f"download failed: {url} is a Git LFS pointer, not the data file")
    return data


def _check_parses(path: Path, url: str) -> None:
    try:
        read_conll(path)
    except DataError as error:
        where = f"line {error.line}: " if error.line is not None else ""
        raise KdError(f"downloaded file {url} is not a valid corpus: {where}{error.message}") from None


def _source_text(info: CorpusInfo) -> str:
    lines = [
        f"repository: https://github.com/{UPSTREAM_REPOSITORY}",
        f"commit: {UPSTREAM_COMMIT}",
        f"folder: data/{info.source_folder}",
        f"licence: {info.licence}",
        *(f"{split}: {info.url(split)}" for split in SPLITS),
    ]
    return "\n".join(lines) + "\n"


def _replace_dir(staging: Path, target: Path) -> None:
    """Move staging to target; an existing target is swapped out only after the move works."""
    if not target.exists():
        os.replace(staging, target)
        return
    old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
    os.replace(target, old / target.name)
    try:
        os.replace(staging, target)
    except OSError:
        os.replace(old / target.name, target)
        old.rmdir()
        raise
    shutil.rmtree(old, ignore_errors=True)


def verify_checksums(sums_file: Path) -> list[str]:
    """Problems found checking a `sha256sum`-format file against the files beside it; [] if all match."""
    problems = []
    base = sums_file.parent
    for number, line in enumerate(sums_file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        expected, _, name = line.partition("  ")
        name = name.lstrip("*")
        if not name:
            raise DataError(sums_file, "expected '<sha256>  <file>'", number)
        path = base / name
        if not path.resolve().is_relative_to(base.resolve()):  # `../x`, `/etc/x`, a link: not the corpus's to read
            raise DataError(sums_file, f"{name}: leads outside {base}", number)
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != expected.strip().lower():
            problems.append(f"{name}: checksum mismatch")
    return problems


def corpus_statistics(corpus_dir: Path) -> dict:
    """Per-split sentence, token and entity counts, for sanity-checking a corpus before training."""
    splits = available_splits(corpus_dir)
    if not splits:
        raise KdError(f"{corpus_dir}: no split files (expected train/devel/test with suffix .tsv)")
    return {
        "path": str(corpus_dir),
        "splits": {split: _split_statistics(load_split(corpus_dir, split)) for split in splits},
    }


def _split_statistics(sentences: list[Sentence]) -> dict:
    entities = Counter(tag[2:] for sentence in sentences for tag in sentence.tags if tag.startswith("B-"))
    return {
        "sentences": len(sentences),
        "tokens": sum(len(sentence) for sentence in sentences),
        "entity_types": sorted(entities),
        "entities": dict(sorted(entities.items())),
    }

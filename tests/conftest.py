"""Shared fixtures: tiny corpora made on the fly, an isolated MLflow store, small model sizes."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"

# Small sizes keep end-to-end tests to seconds; the architecture is the same.
SMALL_MODEL = ["--word-dim", "16", "--char-dim", "8", "--char-hidden", "8", "--shared-hidden", "16",
               "--task-hidden", "16", "--hidden-dim", "16", "--dropout", "0.1"]

ENTITIES = {"Chemical": ["aspirin", "ibuprofen", "caffeine", "cisplatin"],
            "Disease": ["cancer", "asthma", "diabetes", "fever"]}
FILLER = ["the", "patient", "was", "given", "for", "and", "with", "showed", "no", "signs", "of", "a", "severe"]


def make_sentences(count: int, seed: int, entity_types: tuple[str, ...] = ("Chemical", "Disease")) -> list[list[tuple[str, str]]]:
    """Sentences whose entities are a few fixed words (some two-token), so a model learns them in
    a few epochs."""
    rng = random.Random(seed)
    sentences = []
    for _ in range(count):
        tokens: list[tuple[str, str]] = []
        for _ in range(rng.randint(3, 12)):
            if rng.random() < 0.25:
                kind = rng.choice(entity_types)
                tokens.append((rng.choice(ENTITIES[kind]), f"B-{kind}"))
                if rng.random() < 0.3:
                    tokens.append(("syndrome" if kind == "Disease" else "sulfate", f"I-{kind}"))
            else:
                tokens.append((rng.choice(FILLER), "O"))
        sentences.append(tokens)
    return sentences


def write_corpus(directory: Path, sizes: dict[str, int] | None = None, seed: int = 0,
                 entity_types: tuple[str, ...] = ("Chemical", "Disease")) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for offset, (split, count) in enumerate((sizes or {"train": 200, "devel": 30, "test": 30}).items()):
        lines = []
        for sentence in make_sentences(count, seed * 100 + offset, entity_types):
            lines.extend(f"{token}\t{tag}" for token, tag in sentence)
            lines.append("")
        (directory / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return directory


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    root = tmp_path / "corpora"
    write_corpus(root / "tiny", seed=0)
    write_corpus(root / "other", seed=1, entity_types=("Disease",))
    return root


@pytest.fixture
def tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An isolated MLflow store; the working directory moves to tmp so checkpoints stay there too."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    monkeypatch.chdir(tmp_path)
    return uri

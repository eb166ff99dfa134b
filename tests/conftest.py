"""Shared fixtures: tiny corpora made on the fly, an isolated MLflow store, small model sizes."""
from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

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
    return make_corpora(tmp_path / "corpora")


@pytest.fixture
def tracking(tmp_path: Path) -> Iterator[str]:
    """An isolated MLflow store for one test (see `isolated_store`)."""
    with isolated_store(tmp_path) as uri:
        yield uri


def make_corpora(root: Path) -> Path:
    """The two tiny corpora most tests use: `tiny` (Chemical, Disease) and `other` (Disease)."""
    write_corpus(root / "tiny", seed=0)
    write_corpus(root / "other", seed=1, entity_types=("Disease",))
    return root


@contextlib.contextmanager
def isolated_store(root: Path) -> Iterator[str]:
    """For a module's shared fixture: an MLflow store in `root`, the working directory there (so
    checkpoints stay there too) and one torch thread, which on a busy 2-core machine is several
    times faster than two for these tiny models. Yields the tracking URI."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("MLFLOW_TRACKING_URI", uri)
            patch.delenv("MLFLOW_RUN_ID", raising=False)
            patch.delenv("KD_DATA_DIR", raising=False)
            patch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
            patch.chdir(root)
            yield uri
    finally:
        torch.set_num_threads(threads)


def run_kd(*args) -> dict:
    """Runs a `kd` command in process; it must succeed. Returns its last line of stdout as JSON."""
    from click.testing import CliRunner

    from kd.cli.main import cli

    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def one_line_error(result) -> str:
    """The message of a refused command: exit code 2 and a single line `error: ...`."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    message = result.output.strip()
    assert len(message.splitlines()) == 1, f"expected a one-line error, got:\n{message}"
    assert message.startswith("error: "), message
    return message


def die_after_epoch(monkeypatch: pytest.MonkeyPatch, epoch: int) -> None:
    """Makes training stop as if killed right after the checkpoint of `epoch` was written."""
    from kd.training import loop

    save = loop.TrainingState.save

    def save_then_die(self, path):
        save(self, path)
        if self.epoch == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop.TrainingState, "save", save_then_die)


# SMALL_MODEL as MLproject parameters (option names with underscores).
SMALL_MODEL_PARAMS = {SMALL_MODEL[i].lstrip("-").replace("-", "_"): SMALL_MODEL[i + 1]
                      for i in range(0, len(SMALL_MODEL), 2)}


def subprocess_env(tracking_uri: str) -> dict[str, str]:
    """The environment of a `kd` or `mlflow` child process logging to `tracking_uri`: this one's,
    without the run it may be inside, and without progress bars."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    env.pop("MLFLOW_RUN_ID", None)
    return env


def kill_while(pid: int, still_true) -> bool:
    """SIGKILLs `pid` if `still_true()` holds while the process is stopped, so what was seen (a run
    still RUNNING) is what the kill interrupts: between seeing it and killing, a fast run could
    finish (CI: a 3-epoch trial ended FINISHED). Otherwise lets the process go on; False then, as
    also when the check could not tell (the store busy under the stopped process)."""
    import signal

    os.kill(pid, signal.SIGSTOP)
    try:
        holds = bool(still_true())
    except Exception:
        holds = False
    os.kill(pid, signal.SIGKILL if holds else signal.SIGCONT)
    return holds


def mlflow_run(entry_point: str, params: dict, experiment: str, cwd: Path, tracking_uri: str,
               env: dict[str, str] | None = None) -> dict:
    """`mlflow run <repo> -e ENTRY --env-manager local` as a user types it, logging to
    `tracking_uri`, with `env` added to the environment; it must succeed. Returns the JSON line kd
    printed last."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", entry_point, "--env-manager", "local",
               "--experiment-name", experiment]
    for key, value in params.items():
        command += ["-P", f"{key}={value}"]
    result = subprocess.run(command, cwd=cwd, env={**subprocess_env(tracking_uri), **(env or {})}, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


# --- one teacher store for the whole session ----------------------------------------------------------

# The options of the session's multi-task teacher (test_distill's students learn from it).
TEACHER_TRAINING = ["--batch-size", "16", "--learning-rate", "0.02"]


@dataclass
class SharedTeachers:
    """Teachers and caches trained once per session in their own MLflow store. A module starts its
    own store as a copy of it (`open_copy`): the runs are there, their artifacts read from the
    session's folder, and what the module logs stays in its copy."""

    root: Path
    data_dir: Path
    stm: str  # single-task teacher on `tiny` (experiment `teachers`)
    stm_cache: str  # its float32 logits (experiment `teachers`)
    mtm: str  # multi-task teacher on `tiny` and `other` (experiment `kd`)
    mtm_cache: str  # its float32 cache of every layer (experiment `kd`)

    @contextlib.contextmanager
    def open_copy(self, root: Path) -> Iterator[str]:
        """`isolated_store(root)` holding a copy of the session's runs."""
        shutil.copyfile(self.root / "mlflow.db", root / "mlflow.db")
        with isolated_store(root) as uri:
            yield uri


@pytest.fixture(scope="session")
def shared_teachers(tmp_path_factory) -> SharedTeachers:
    """Trained once for test_distill, test_failures and test_bad_input, which each trained their own
    (one epoch, SMALL_MODEL)."""
    root = tmp_path_factory.mktemp("shared-teachers")
    data_dir = make_corpora(root / "corpora")
    with isolated_store(root):
        stm = run_kd("train", "--task", "tiny", "--data-dir", data_dir, "--epochs", "1", *SMALL_MODEL,
                     "--experiment", "teachers", "--json")["run_id"]
        stm_cache = run_kd("cache-logits", "--teacher", stm, "--data-dir", data_dir, "--dtype", "float32",
                           "--experiment", "teachers", "--json")["run_id"]
        mtm = run_kd("train-teacher", "--tasks", "tiny,other", "--data-dir", data_dir, *SMALL_MODEL, "--epochs", "1",
                     *TEACHER_TRAINING, "--json")["run_id"]
        mtm_cache = run_kd("cache-logits", "--teacher", mtm, "--data-dir", data_dir,
                           "--layers", "logits,task,shared,marginals", "--dtype", "float32", "--json")["run_id"]
    return SharedTeachers(root=root, data_dir=data_dir, stm=stm, stm_cache=stm_cache, mtm=mtm, mtm_cache=mtm_cache)

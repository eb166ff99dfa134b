"""What a training job is and the pieces every job shares: its options (model, schedule, run), corpus
loading, model construction and checkpoint bookkeeping."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kd.data.batching import EncodedDataset
from kd.data.corpora import available_splits, corpus_name, load_split, resolve_corpus_dir
from kd.data.embeddings import embedding_matrix, read_word_vectors
from kd.data.types import SPLITS, Sentence
from kd.data.vocab import Vocabularies
from kd.errors import FieldError, KdError
from kd.models.tagger import Tagger, TaggerConfig
from kd.tracking.runs import TrackedRun
from kd.training.distillation import DistillOptions
from kd.training.loop import TrainingOptions, TrainingState
from kd.training.schedule import check_schedule


@dataclass
class ModelOptions:
    output: str = "softmax"
    word_dim: int = 100
    char_dim: int = 25
    char_hidden: int = 25
    shared_hidden: int = 200
    task_hidden: int = 200
    hidden_dim: int = 200
    dropout: float = 0.5
    embeddings: str | None = None

    def __post_init__(self) -> None:
        if self.output not in ("softmax", "crf"):
            raise FieldError("output", self.output, "use softmax or crf")
        if not 0 <= self.dropout < 1:
            raise FieldError("dropout", self.dropout, "must be in [0, 1)")
        for name in ("word_dim", "char_dim", "char_hidden", "shared_hidden", "task_hidden", "hidden_dim"):
            if getattr(self, name) < 1:
                raise FieldError(name, getattr(self, name), "must be at least 1")


@dataclass(kw_only=True)
class RunPlan:
    """Which splits a run trains on and scores, how a multi-task schedule draws, where it runs and
    is tracked: shared by the BiLSTM and transformer jobs."""

    train_splits: list[str] = field(default_factory=lambda: ["train", "devel"])
    eval_split: str = "test"
    sampling: str = "uniform"
    optimizer_state: str = "shared"
    device: str = "auto"
    experiment: str = "kd"
    run_name: str | None = None


@dataclass
class TaggerJob(RunPlan):
    corpora: list[str]
    data_dir: str | None = None
    model: ModelOptions = field(default_factory=ModelOptions)
    training: TrainingOptions = field(default_factory=TrainingOptions)
    distill: DistillOptions | None = None  # set for a student

    def __post_init__(self) -> None:
        if not self.corpora:
            raise KdError("no corpus given")
        check_schedule(self.sampling, self.optimizer_state)
        if self.distill is not None and len(self.corpora) != 1:
            raise KdError("a student learns one corpus")

    @property
    def model_kind(self) -> str:
        if self.distill is not None:
            return "student"
        return "stm" if len(self.corpora) == 1 else "mtm"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TaggerJob":
        data = dict(data)
        # Jobs saved before the option existed trained with per-task moments; a resume keeps them.
        data.setdefault("optimizer_state", "per-task")
        data["model"] = ModelOptions(**data["model"])
        data["training"] = TrainingOptions(**data["training"])
        if data.get("distill") is not None:
            data["distill"] = DistillOptions(**data["distill"])
        return cls(**data)

    def params(self) -> dict[str, Any]:
        # The data folder, resolved, lets `kd cache-logits` find a teacher's corpora without --data-dir.
        params = {"corpora": ",".join(self.corpora), "data_dir": str(Path(self.data_dir).resolve()) if self.data_dir else "",
                  "train_splits": ",".join(self.train_splits),
                  "eval_split": self.eval_split, "device": self.device, **options_params(self.model, self.training)}
        if self.model_kind == "mtm":
            params["sampling"] = self.sampling
            params["optimizer_state"] = self.optimizer_state
        if self.distill is not None:
            weights = self.distill.weights()
            params.update({"loss": self.distill.loss, "alpha": weights.alpha, "beta": weights.beta,
                           "gamma": weights.gamma, "kappa": weights.kappa, "tau": weights.tau,
                           "cache_run": self.distill.cache_run or "",
                           "teacher_runs": ",".join(self.distill.teacher_runs or []),
                           **({"unlabelled": self.distill.unlabelled} if self.distill.unlabelled else {}),
                           **({"unlabelled_ratio": self.distill.unlabelled_ratio}
                              if self.distill.unlabelled_ratio is not None else {}),
                           **({"allow_eval_overlap": True} if self.distill.allow_eval_overlap else {})})
        return params


@dataclass
class TaskData:
    """One corpus: its name (the task) and the sentences of the splits that were asked for."""

    name: str
    directory: Path
    splits: dict[str, list[Sentence]]

    def sentences(self, splits: Sequence[str]) -> list[Sentence]:
        return [s for split in splits for s in self.splits[split]]


def parse_splits(value: str, option: str) -> list[str]:
    splits = [s.strip() for s in value.split(",") if s.strip()]
    unknown = [s for s in splits if s not in SPLITS]
    if not splits or unknown:
        raise KdError(f"{option} {value}: use a comma-separated subset of {', '.join(SPLITS)}")
    return splits


def load_task(corpus: str, data_dir: Path | None, splits: Sequence[str], optional: Sequence[str] = ()) -> TaskData:
    """Reads the `splits` of a corpus (an error if one is missing) and those of `optional` that exist."""
    directory = resolve_corpus_dir(corpus, data_dir)
    present = available_splits(directory)
    missing = [s for s in splits if s not in present]
    if missing:
        raise KdError(f"{directory}: no {', '.join(missing)} split (found: {', '.join(present) or 'none'})")
    wanted = dict.fromkeys([*splits, *(s for s in optional if s in present)])
    return TaskData(name=corpus_name(directory), directory=directory,
                    splits={split: load_split(directory, split) for split in wanted})


def load_tasks(corpora: Sequence[str], data_dir: Path | None, splits: Sequence[str],
               optional: Sequence[str] = ()) -> dict[str, TaskData]:
    """`load_task` of each corpus, by corpus name; a corpus given twice is an error."""
    tasks: dict[str, TaskData] = {}
    for corpus in corpora:
        data = load_task(corpus, data_dir, splits, optional)
        if data.name in tasks:
            raise KdError(f"corpus {data.name} given twice")
        tasks[data.name] = data
    return tasks


def build_tagger(options: ModelOptions, vocabularies: Vocabularies, seed: int) -> tuple[Tagger, dict[str, Any]]:
    """A freshly initialised tagger (deterministic for the seed) and facts worth logging."""
    torch.manual_seed(seed)
    word_vectors, facts = None, {}
    word_dim = options.word_dim
    if options.embeddings:
        vector_words, vectors = read_word_vectors(options.embeddings, keep=set(vocabularies.words.items) | {
            w.lower() for w in vocabularies.words.items})
        word_dim = vectors.shape[1]
        word_vectors, found = embedding_matrix(vocabularies.words.items, vector_words, vectors,
                                               np.random.default_rng(seed))
        facts = {"pretrained_words_found": found, "pretrained_dim": word_dim}
    config = TaggerConfig(
        tasks={task: len(tags) for task, tags in vocabularies.tags.items()},
        num_words=len(vocabularies.words), num_chars=len(vocabularies.chars), output=options.output,
        word_dim=word_dim, char_dim=options.char_dim, char_hidden=options.char_hidden,
        shared_hidden=options.shared_hidden, task_hidden=options.task_hidden, hidden_dim=options.hidden_dim,
        dropout=options.dropout)
    model = Tagger(config, word_vectors=None if word_vectors is None else word_vectors.astype(np.float32))
    return model, facts


def encode(task: str, sentences: Sequence[Sentence], vocabularies: Vocabularies) -> EncodedDataset:
    return EncodedDataset(sentences, vocabularies, task)


def flatten_params(prefix: str, values: Mapping[str, Any]) -> dict[str, Any]:
    return {f"{prefix}{key}": value for key, value in values.items()}


def options_params(*groups: Any) -> dict[str, Any]:
    """Every option of the given dataclasses as one flat dict of MLflow params."""
    params: dict[str, Any] = {}
    for group in groups:
        params.update(asdict(group))
    return params


def checkpoint_file(checkpoint_dir: Path, run_id: str) -> Path:
    return checkpoint_dir / f"{run_id}.pt"


def job_to_run(client, job: Any, resume_run_id: str | None, from_dict: Callable[[dict[str, Any]], Any],
               ) -> tuple[Any, TrackedRun | None, TrainingState | None, Path | None]:
    """The job a training run does: `job`, or with `resume_run_id` the one that run's checkpoint
    keeps (`from_dict` rebuilds it), with the resumed run, its training state and checkpoint path."""
    if resume_run_id:
        run = TrackedRun.resume(client, resume_run_id)
        state, checkpoint = resume_state(run)
        return from_dict(state.job), run, state, checkpoint
    if job is None:
        raise KdError("no job to run: give a job or a run to resume")
    return job, None, None, None


def resume_state(run: TrackedRun) -> tuple[TrainingState, Path]:
    """The checkpoint a run left behind, from the path tagged on the run."""
    path = run.get().data.tags.get("checkpoint")
    if not path:
        raise FieldError("resume", run.run_id, "the run has no checkpoint tag")
    return TrainingState.load(path), Path(path)

"""Training a single-task model (STM): one corpus, one head, tracked as one MLflow run."""
from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kd.data.batching import EncodedDataset, bucketed_batches
from kd.data.conll import write_conll
from kd.data.vocab import build_vocabularies
from kd.losses.supervised import hard_label_loss
from kd.models.io import save_model
from kd.models.tagger import Tagger
from kd.data.vocab import Vocabularies
from kd.tracking.models import log_tagger_model
from kd.tracking.runs import TrackedRun, git_commit
from kd.training.device import resolve_device
from kd.training.evaluate import evaluate
from kd.training.jobs import (ModelOptions, build_tagger, checkpoint_file, load_task, options_params,
                              resume_state, run_status)
from kd.training.loop import EpochCallback, TrainingOptions, TrainingState, train


@dataclass
class SingleTaskJob:
    corpus: str
    data_dir: str | None = None
    model: ModelOptions = field(default_factory=ModelOptions)
    training: TrainingOptions = field(default_factory=TrainingOptions)
    train_splits: list[str] = field(default_factory=lambda: ["train", "devel"])
    eval_split: str = "test"
    device: str = "auto"
    experiment: str = "kd"
    run_name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SingleTaskJob":
        data = dict(data)
        data["model"] = ModelOptions(**data["model"])
        data["training"] = TrainingOptions(**data["training"])
        return cls(**data)

    def params(self) -> dict[str, Any]:
        return {"corpus": self.corpus, "train_splits": ",".join(self.train_splits), "eval_split": self.eval_split,
                "device": self.device, **options_params(self.model, self.training)}


@dataclass
class RunSummary:
    run_id: str
    metrics: dict[str, float]


def single_task_plan(task: str, data: EncodedDataset, batch_size: int):
    def plan(generator: np.random.Generator):
        for sentence_ids in bucketed_batches(data.lengths, batch_size, generator):
            yield task, data.batch(sentence_ids)
    return plan


def supervised_loss(model: Tagger):
    def loss(task: str, batch) -> dict[str, torch.Tensor]:
        return {"loss": hard_label_loss(model(batch, task), batch.tags, model.crf(task))}
    return loss


def log_final_artifacts(run: TrackedRun, model: Tagger, vocabularies: Vocabularies, job_dict: dict[str, Any],
                        predictions: dict[str, tuple[EncodedDataset, list[list[str]]]],
                        reports: dict[str, Any]) -> None:
    """The model (pyfunc), its config, predictions per evaluated split as CoNLL and per-type reports."""
    with tempfile.TemporaryDirectory() as staging:
        staging = Path(staging)
        model_dir = save_model(model, vocabularies, staging / "tagger")
        log_tagger_model(run, model_dir)
        for split, (dataset, predicted) in predictions.items():
            target = staging / f"{split}.conll"
            write_conll([s.tokens for s in dataset.sentences], predicted, target)
            run.log_artifact(target, "predictions")
    run.log_json(job_dict, "config.json")
    run.log_json(reports, "report.json")


def train_single_task(job: SingleTaskJob | None, client, checkpoint_dir: Path, *,
                      callbacks: Sequence[EpochCallback] = (), resume_run_id: str | None = None,
                      extra_tags: dict[str, str] | None = None, attach_to: str | None = None) -> RunSummary:
    """Trains, evaluates and logs one STM; with `resume_run_id`, continues that run from its
    checkpoint with the options it was started with (`job` is then ignored)."""
    state: TrainingState | None = None
    if resume_run_id:
        run = TrackedRun.resume(client, resume_run_id)
        state, checkpoint = resume_state(run)
        job = SingleTaskJob.from_dict(state.job)
    assert job is not None
    device = resolve_device(job.device)
    data = load_task(job.corpus, _path(job.data_dir), [*job.train_splits, job.eval_split],
                     optional=["devel"] if "devel" not in job.train_splits else [])
    held_out_devel = "devel" not in job.train_splits and "devel" in data.splits
    task = data.name
    vocabularies = build_vocabularies({task: data.sentences(job.train_splits)})
    model, facts = build_tagger(job.model, vocabularies, job.training.seed)
    model.to(device)
    train_data = EncodedDataset(data.sentences(job.train_splits), vocabularies, task)
    devel_data = EncodedDataset(data.splits["devel"], vocabularies, task) if held_out_devel else None
    eval_data = EncodedDataset(data.splits[job.eval_split], vocabularies, task)

    if state is None:
        run = TrackedRun.start(client, job.experiment, job.run_name, {
            "task": task, "model_kind": "stm", "output": job.model.output, "seed": job.training.seed,
            "git_commit": git_commit(), **(extra_tags or {})}, attach_to=attach_to)
        run.log_params(job.params())
        checkpoint = checkpoint_file(checkpoint_dir, run.run_id).resolve()
        run.set_tags({"checkpoint": str(checkpoint)})
        state = TrainingState(job=job.to_dict())
    with run_status(run):
        run.log_metrics({"num_parameters": model.num_parameters(), "train_tokens": train_data.num_tokens,
                         **{k: float(v) for k, v in facts.items()}})
        optimizer = torch.optim.Adam(model.parameters(), lr=job.training.learning_rate)

        def evaluate_devel(epoch: int) -> dict[str, float]:
            scores, _ = evaluate(model, devel_data, vocabularies, task, device, job.training.precision)
            return {"devel_f1": scores.f1}

        result = train(
            model, {task: optimizer}, single_task_plan(task, train_data, job.training.batch_size),
            supervised_loss(model), job.training, device,
            evaluate_epoch=evaluate_devel if held_out_devel else None,
            selection_metric="devel_f1" if held_out_devel else None,
            callbacks=callbacks, log_metrics=run.log_metrics, checkpoint_path=checkpoint,
            state=state)

        final: dict[str, float] = {}
        predictions, reports = {}, {}
        evaluated = {job.eval_split: eval_data, **({"devel": devel_data} if held_out_devel else {})}
        for split, dataset in evaluated.items():
            scores, predicted = evaluate(model, dataset, vocabularies, task, device, job.training.precision)
            final.update(scores.as_metrics(split))
            predictions[split] = (dataset, predicted)
            reports[split] = {"precision": scores.precision, "recall": scores.recall, "f1": scores.f1,
                              "per_type": scores.per_type}
        if result.state.best_epoch is not None:
            final["best_epoch"] = float(result.state.best_epoch)
        final["epochs_trained"] = float(result.state.epoch)
        run.log_metrics(final, step=result.state.epoch)
        log_final_artifacts(run, model, vocabularies, job.to_dict(), predictions, reports)
    checkpoint.unlink(missing_ok=True)
    return RunSummary(run_id=run.run_id, metrics=final)


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None

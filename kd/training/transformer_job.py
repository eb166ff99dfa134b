"""Fine-tuning a Hugging Face encoder as a (multi-task) token classifier, the transformer teacher:
the shared encoder plus one head per corpus, trained with the MTM's alternating per-task schedule
and optimizers (`alternating_plan`, `task_optimizers`), evaluated and tracked as one MLflow run
logged like the MTM (`model_kind = mtm`, tag `teacher_kind = transformer`, per-corpus F1)."""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from kd.data.vocab import tag_list
from kd.errors import FieldError
from kd.models.device import resolve_device
from kd.models.predict import PREDICT_BATCH_TOKENS, decode_in_batches
from kd.data.corpora import split_path
from kd.models.transformer import (WORD_OUTPUT, SentenceTooLong, SubwordDataset, TransformerTagger,
                                    build_transformer, save_transformer)
from kd.tracking.runs import TrackedRun, git_commit
from kd.tracking.status import run_status
from kd.tracking.metrics import corpus_metric
from kd.training.evaluate import EntityScores, entity_scores, metric_names
from kd.training.identity import default_run_name, identity_tags, transformer_definition
from kd.training.jobs import RunPlan, load_tasks
from kd.training.loop import BatchCallback, EpochCallback, TrainingOptions, train
from kd.training.schedule import alternating_plan, check_schedule, supervised_loss, task_optimizers
from kd.training.tagger_job import RunSummary, log_final_artifacts
from kd.training.weighing import model_bytes

# Fine-tuning defaults where the BiLSTM's (20 epochs at 1e-3) do not fit: Adam at 1e-3 wrecks a
# pretrained encoder; 5e-5 and 3 epochs are the usual BERT fine-tuning choices (Devlin et al. 2019).
TRANSFORMER_LEARNING_RATE = 5e-5
TRANSFORMER_EPOCHS = 3


@dataclass
class TransformerJob(RunPlan):
    corpora: list[str]
    base: str  # a local model folder, or a hub id where a hub is reachable
    data_dir: str | None = None
    output: str = "softmax"
    dropout: float = 0.1
    training: TrainingOptions = field(default_factory=lambda: TrainingOptions(
        epochs=TRANSFORMER_EPOCHS, learning_rate=TRANSFORMER_LEARNING_RATE))

    def __post_init__(self) -> None:
        if not self.corpora:
            raise FieldError("corpora", None, "no corpus given")
        if not self.base:
            raise FieldError("base", None, "give the encoder to fine-tune (a model folder or hub id)")
        if self.output not in ("softmax", "crf"):
            raise FieldError("output", self.output, "use softmax or crf")
        if not 0 <= self.dropout < 1:
            raise FieldError("dropout", self.dropout, "must be in [0, 1)")
        check_schedule(self.sampling, self.optimizer_state)

    def params(self) -> dict[str, Any]:
        return {"kind": "transformer", "corpora": ",".join(self.corpora), "base": self.base,
                "data_dir": str(Path(self.data_dir).resolve()) if self.data_dir else "",
                "train_splits": ",".join(self.train_splits), "eval_split": self.eval_split, "output": self.output,
                "dropout": self.dropout, "sampling": self.sampling, "optimizer_state": self.optimizer_state,
                "device": self.device, "word_output": WORD_OUTPUT, **asdict(self.training)}


def predict_transformer_tags(model: TransformerTagger, dataset: SubwordDataset, tags: Sequence[str], task: str,
                             device: torch.device, precision: str = "fp32",
                             batch_tokens: int = PREDICT_BATCH_TOKENS) -> list[list[str]]:
    """Tag strings for every sentence, in dataset order, in batches of at most `batch_tokens` padded words."""
    return decode_in_batches(model, dataset, tags, task, device, precision, batch_tokens)


class TransformerEvaluator:
    """Scores every task of one split and keeps the predictions (as tagger_job.Evaluator)."""

    def __init__(self, model: TransformerTagger, tags: dict[str, list[str]], datasets: dict[str, SubwordDataset],
                 device: torch.device, precision: str) -> None:
        self.model, self.tags, self.datasets, self.device, self.precision = model, tags, datasets, device, precision

    def run(self) -> tuple[dict[str, EntityScores], dict[str, list[list[str]]]]:
        scores, predictions = {}, {}
        for task, dataset in self.datasets.items():
            predictions[task] = predict_transformer_tags(self.model, dataset, self.tags[task], task, self.device,
                                                         self.precision)
            scores[task] = entity_scores([s.tags for s in dataset.sentences], predictions[task])
        return scores, predictions


def per_corpus_metrics(split: str, scores: dict[str, EntityScores]) -> dict[str, float]:
    """`metric_names`, with the per-corpus names (`<corpus>/test_f1`) even for one corpus."""
    metrics = metric_names(split, scores)
    for task, task_scores in scores.items():
        metrics.update({corpus_metric(name, task): value for name, value in task_scores.as_metrics(split).items()})
    return metrics


def encode_splits(model: TransformerTagger, data: Any, splits: Sequence[str], tags: list[str]) -> SubwordDataset:
    """The sentences of a corpus's `splits` (kd.training.jobs.TaskData), encoded; a sentence too long
    for the encoder is named by its split's file and its number there."""
    try:
        return model.encode(data.sentences(splits), tags)
    except SentenceTooLong as error:
        index = error.index
        for split in splits:
            if index < len(data.splits[split]):
                raise SentenceTooLong(index, error.words, error.limit, split_path(data.directory, split)) from None
            index -= len(data.splits[split])
        raise


def run_transformer_job(job: TransformerJob, client, *, callbacks: Sequence[EpochCallback] = (),
                        attach_to: str | None = None, on_start: Callable[[str], None] | None = None,
                        on_batch: BatchCallback | None = None) -> RunSummary:
    """Fine-tunes, evaluates and logs one transformer teacher; the model artifact `model/` is the
    folder of kd.models.transformer.save_transformer (safetensors, JSON, tokenizer files).
    `on_start` hears the run id as soon as the run exists, `on_batch` every training batch."""
    device = resolve_device(job.device)
    held_out_devel = "devel" not in job.train_splits
    tasks = load_tasks(job.corpora, Path(job.data_dir) if job.data_dir else None,
                       [*job.train_splits, job.eval_split], optional=["devel"] if held_out_devel else [])
    held_out_devel = held_out_devel and all("devel" in data.splits for data in tasks.values())
    tags = {name: tag_list(data.sentences(job.train_splits)) for name, data in tasks.items()}
    model = build_transformer(job.base, {name: len(t) for name, t in tags.items()}, job.output, job.dropout,
                              job.training.seed).to(device)
    train_data = {name: encode_splits(model, data, job.train_splits, tags[name]) for name, data in tasks.items()}
    splits = [job.eval_split] + (["devel"] if held_out_devel and job.eval_split != "devel" else [])
    evaluators = {split: TransformerEvaluator(model, tags, {name: encode_splits(model, data, [split], tags[name])
                                                            for name, data in tasks.items()},
                                              device, job.training.precision) for split in splits}
    identity = identity_tags(transformer_definition(job))
    run = TrackedRun.start(client, job.experiment, job.run_name or default_run_name(
        identity["model_name"], list(tasks), job.training.seed), {
        "task": ",".join(tasks), "model_kind": "mtm", "teacher_kind": "transformer", "output": job.output,
        "seed": job.training.seed, "word_output": WORD_OUTPUT, "git_commit": git_commit(), **identity},
        attach_to=attach_to)
    run.log_params(job.params())
    if on_start is not None:
        on_start(run.run_id)
    with run_status(run):
        run.log_metrics({"num_parameters": float(model.num_parameters()), "model_bytes": float(model_bytes(model)),
                         "train_tokens": float(sum(d.num_tokens for d in train_data.values()))})

        def evaluate_devel(epoch: int) -> dict[str, float]:
            scores, _ = evaluators["devel"].run()
            return {k: v for k, v in metric_names("devel", scores).items() if k.split("/")[-1] == "devel_f1"}

        result = train(model, task_optimizers(model, job.training.learning_rate, job.optimizer_state),
                       alternating_plan(train_data, job.training.batch_size, job.sampling), supervised_loss(model),
                       job.training, device, evaluate_epoch=evaluate_devel if held_out_devel else None,
                       selection_metric="devel_f1" if held_out_devel else None, callbacks=callbacks,
                       log_metrics=run.log_metrics, on_batch=on_batch)
        final: dict[str, float] = {}
        results = {}
        for split, evaluator in evaluators.items():
            started = time.perf_counter()
            results[split] = evaluator.run()
            if split == job.eval_split:
                words = sum(d.num_tokens for d in evaluator.datasets.values())
                final["predict_tokens_per_second"] = words / (time.perf_counter() - started)
            final.update(per_corpus_metrics(split, results[split][0]))
        if result.state.best_epoch is not None:
            final["best_epoch"] = float(result.state.best_epoch)
        final["epochs_trained"] = float(result.state.epoch)
        run.log_metrics(final, step=result.state.epoch)
        log_final_artifacts(run, lambda staging: run.log_artifact(save_transformer(model, tags, staging / "model"),
                                                                  "model"), asdict(job), evaluators, results)
    return RunSummary(run_id=run.run_id, metrics=final)

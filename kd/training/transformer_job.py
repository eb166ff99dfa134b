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
from kd.models.transformer import WORD_OUTPUT, SubwordDataset, TransformerTagger, build_transformer, save_transformer
from kd.tracking.models import log_tagger_model
from kd.tracking.runs import TrackedRun, git_commit
from kd.tracking.status import run_status
from kd.tracking.metrics import corpus_metric
from kd.training.evaluate import EntityScores, entity_scores, metric_names
from kd.training.identity import default_run_name, identity_tags, transformer_definition
from kd.training.jobs import RunPlan, checkpoint_file, job_to_run, load_tasks
from kd.training.loop import BatchCallback, EpochCallback, TrainingOptions, TrainingState, train
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

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TransformerJob":
        """The job a checkpoint keeps (`asdict` of it), for `--resume`."""
        return cls(**{**data, "training": TrainingOptions(**data["training"])})

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


def score_splits(evaluators: dict[str, TransformerEvaluator], eval_split: str) -> tuple[dict[str, float], dict]:
    """The final per-corpus metrics of every evaluated split, with the words per second of tagging
    `eval_split`, and each split's scores and predictions."""
    final: dict[str, float] = {}
    results = {}
    for split, evaluator in evaluators.items():
        started = time.perf_counter()
        results[split] = evaluator.run()
        if split == eval_split:
            words = sum(d.num_tokens for d in evaluator.datasets.values())
            final["predict_tokens_per_second"] = words / (time.perf_counter() - started)
        final.update(per_corpus_metrics(split, results[split][0]))
    return final, results


def run_transformer_job(job: TransformerJob | None, client, checkpoint_dir: Path, *,
                        callbacks: Sequence[EpochCallback] = (), resume_run_id: str | None = None,
                        attach_to: str | None = None, on_start: Callable[[str], None] | None = None,
                        on_batch: BatchCallback | None = None) -> RunSummary:
    """Fine-tunes, evaluates and logs one transformer teacher; its logged model `model` (MLflow pyfunc,
    as a BiLSTM's) holds the folder of kd.models.transformer.save_transformer (safetensors, JSON,
    tokenizer files). A checkpoint under `checkpoint_dir` after every epoch lets `resume_run_id`
    continue a stopped run with the options it was started with (`job` is then ignored), as
    tagger_job's runs do. `on_start` hears the run id as soon as the run exists, `on_batch` every
    training batch."""
    job, run, state, checkpoint = job_to_run(client, job, resume_run_id, TransformerJob.from_dict)
    device = resolve_device(job.device)
    held_out_devel = "devel" not in job.train_splits
    tasks = load_tasks(job.corpora, Path(job.data_dir) if job.data_dir else None,
                       [*job.train_splits, job.eval_split], optional=["devel"] if held_out_devel else [])
    held_out_devel = held_out_devel and all("devel" in data.splits for data in tasks.values())
    tags = {name: tag_list(data.sentences(job.train_splits)) for name, data in tasks.items()}
    model = build_transformer(job.base, {name: len(t) for name, t in tags.items()}, job.output, job.dropout,
                              job.training.seed).to(device)
    train_data = {name: model.encode(data.sentences(job.train_splits), tags[name]) for name, data in tasks.items()}
    splits = [job.eval_split] + (["devel"] if held_out_devel and job.eval_split != "devel" else [])
    evaluators = {split: TransformerEvaluator(model, tags, {name: model.encode(data.splits[split], tags[name])
                                                            for name, data in tasks.items()},
                                              device, job.training.precision) for split in splits}
    if state is None:
        run, checkpoint = start_transformer_run(job, client, list(tasks), checkpoint_dir, attach_to)
        state = TrainingState(job=asdict(job))
        state.save(checkpoint)  # a run killed in its first epoch resumes from scratch
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
                       log_metrics=run.log_metrics, checkpoint_path=checkpoint, state=state, on_batch=on_batch)
        final, results = score_splits(evaluators, job.eval_split)
        if result.state.best_epoch is not None:
            final["best_epoch"] = float(result.state.best_epoch)
        final["epochs_trained"] = float(result.state.epoch)
        run.log_metrics(final, step=result.state.epoch)
        log_final_artifacts(run, lambda staging: log_tagger_model(run, save_transformer(model, tags, staging / "model")),
                            asdict(job), evaluators, results)
    checkpoint.unlink(missing_ok=True)
    client.delete_tag(run.run_id, "checkpoint")
    return RunSummary(run_id=run.run_id, metrics=final)


def start_transformer_run(job: TransformerJob, client, tasks: list[str], checkpoint_dir: Path,
                          attach_to: str | None) -> tuple[TrackedRun, Path]:
    """A new run of the job, tagged like the MTM, its params logged and its checkpoint path tagged."""
    identity = identity_tags(transformer_definition(job))
    run = TrackedRun.start(client, job.experiment, job.run_name or default_run_name(
        identity["model_name"], tasks, job.training.seed), {
        "task": ",".join(tasks), "model_kind": "mtm", "teacher_kind": "transformer", "output": job.output,
        "seed": job.training.seed, "word_output": WORD_OUTPUT, "git_commit": git_commit(), **identity},
        attach_to=attach_to)
    run.log_params(job.params())
    checkpoint = checkpoint_file(checkpoint_dir, run.run_id).resolve()
    run.set_tags({"checkpoint": str(checkpoint)})
    return run, checkpoint

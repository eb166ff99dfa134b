"""Training a tagger on one corpus (the single-task model, STM) or many (the multi-task teacher,
MTM), evaluated and tracked as one MLflow run.

The two differ only in data and schedule: the MTM shares embeddings and the shared BiLSTM across
corpora and has a head per corpus; each step draws one corpus and steps that corpus's own
optimizer, which owns the shared parameters and that corpus's head. With one corpus this is exactly
single-task training.
"""
from __future__ import annotations

import sys
import tempfile
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kd.data.batching import Batch, EncodedDataset, bucketed_batches
from kd.data.conll import write_conll
from kd.data.vocab import Vocabularies, build_vocabularies
from kd.errors import KdError
from kd.losses.supervised import hard_label_loss
from kd.models.io import save_model
from kd.models.tagger import Tagger
from kd.tracking.models import log_tagger_model
from kd.tracking.runs import TrackedRun, git_commit
from kd.training.device import resolve_device
from kd.training.distillation import DistillOptions, StudentModel, distillation_loss
from kd.training.evaluate import EntityScores, evaluate
from kd.training.jobs import (ModelOptions, build_tagger, checkpoint_file, load_tasks, options_params,
                              resume_state, run_status)
from kd.training.knowledge import TeacherKnowledge
from kd.training.loop import EpochCallback, TrainingOptions, TrainingState, train
from kd.training.student_diagnostics import log_student_diagnostics
from kd.training.weighing import weigh_student

SAMPLINGS = ("uniform", "proportional")
# How the MTM's per-task optimizers treat the shared layers: "per-task" gives each task's Adam its
# own moments for them (the published description); "shared" keeps one set of moments for them.
OPTIMIZER_STATES = ("shared", "per-task")


def check_schedule(sampling: str, optimizer_state: str) -> None:
    """The MTM's schedule options, shared by the BiLSTM and transformer jobs."""
    if sampling not in SAMPLINGS:
        raise KdError(f"--sampling {sampling}: use one of {', '.join(SAMPLINGS)}")
    if optimizer_state not in OPTIMIZER_STATES:
        raise KdError(f"optimizer_state {optimizer_state!r}: use one of {', '.join(OPTIMIZER_STATES)}")


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
                           "teacher_runs": ",".join(self.distill.teacher_runs or [])})
        return params


@dataclass
class RunSummary:
    run_id: str
    metrics: dict[str, float]


def alternating_plan(datasets: dict[str, EncodedDataset], batch_size: int, sampling: str):
    """An epoch is as many steps as the batches of all corpora together. Each step draws a corpus
    (uniformly, or in proportion to its number of batches) and takes that corpus's next batch of
    its shuffled, length-bucketed batches, reshuffled when they run out. With one corpus, an
    epoch is each of its batches once."""
    names = list(datasets)

    def shuffled(task: str, generator: np.random.Generator) -> deque[np.ndarray]:
        return deque(bucketed_batches(datasets[task].lengths, batch_size, generator))

    def plan(generator: np.random.Generator) -> Iterator[tuple[str, Batch]]:
        queues = {task: shuffled(task, generator) for task in names}
        if len(names) == 1:
            task = names[0]
            for sentence_ids in queues[task]:
                yield task, datasets[task].batch(sentence_ids)
            return
        counts = np.array([len(queues[task]) for task in names], dtype=np.float64)
        weights = counts / counts.sum() if sampling == "proportional" else np.full(len(names), 1 / len(names))
        for index in generator.choice(len(names), size=int(counts.sum()), p=weights):
            task = names[index]
            if not queues[task]:
                queues[task] = shuffled(task, generator)
            yield task, datasets[task].batch(queues[task].popleft())
    return plan


def supervised_loss(model: Tagger):
    def loss(task: str, batch: Batch) -> dict[str, torch.Tensor]:
        return {"loss": hard_label_loss(model(batch, task), batch.tags, model.crf(task))}
    return loss


def task_optimizers(model: Any, learning_rate: float, state: str = "shared") -> dict[str, torch.optim.Optimizer]:
    """The optimizer that steps for each task's batches: it updates the shared layers and that task's
    head (a head outside the step's graph has no gradient and is left alone).

    "per-task": one Adam per task, each with its own moments for the shared layers, as the method
    describes. "shared": one Adam whose moments for the shared layers gather every task's gradients.
    With one task the two are the same. With six corpora the shared moments gave a better teacher at
    equal epochs (bench/README.md, "Distillation science"): per-task moments let every step take a
    full Adam-sized step along one task's gradient alone, so the shared layers zigzag between tasks.
    `model`: a Tagger or kd.models.transformer.TransformerTagger."""
    if state not in OPTIMIZER_STATES:
        raise KdError(f"optimizer_state {state!r}: use one of {', '.join(OPTIMIZER_STATES)}")
    if state == "shared":
        adam = _adam(list(model.parameters()), learning_rate)
        return {task: adam for task in model.task_names}
    # Any multi-task tagger: `shared_parameters()`, `head(task)` and `task_names` (the BiLSTM, the transformer).
    shared = model.shared_parameters()
    return {task: _adam(shared + list(model.head(task).parameters()), learning_rate) for task in model.task_names}


def _adam(parameters: list[torch.nn.Parameter], learning_rate: float) -> torch.optim.Optimizer:
    # The fused kernel updates all parameters in one pass: ~4x faster than the default step
    # on CPU (6% of an epoch -> under 2%), where it and CUDA are the devices that have it.
    fused = all(p.device.type in ("cpu", "cuda") for p in parameters)
    return torch.optim.Adam(parameters, lr=learning_rate, fused=fused)


def metric_names(split: str, scores: dict[str, EntityScores]) -> dict[str, float]:
    """`<split>_f1` etc.; with several corpora also `<split>_f1/<corpus>`, the plain names then
    being macro averages over corpora."""
    if len(scores) == 1:
        return next(iter(scores.values())).as_metrics(split)
    metrics: dict[str, float] = {}
    for task, task_scores in scores.items():
        metrics.update({f"{name}/{task}": value for name, value in task_scores.as_metrics(split).items()})
    for name in ("precision", "recall", "f1"):
        metrics[f"{split}_{name}"] = float(np.mean([getattr(s, name) for s in scores.values()]))
    return metrics


class Evaluator:
    """Scores every task of one split and keeps the predictions for logging."""

    def __init__(self, model: Tagger, vocabularies: Vocabularies, datasets: dict[str, EncodedDataset],
                 device: torch.device, precision: str) -> None:
        self.model, self.vocabularies, self.datasets = model, vocabularies, datasets
        self.device, self.precision = device, precision

    def run(self) -> tuple[dict[str, EntityScores], dict[str, list[list[str]]]]:
        scores, predictions = {}, {}
        for task, dataset in self.datasets.items():
            scores[task], predictions[task] = evaluate(self.model, dataset, self.vocabularies, task, self.device,
                                                       self.precision)
        return scores, predictions


def log_final_artifacts(run: TrackedRun, log_model: Callable[[Path], None], job_dict: dict[str, Any],
                        evaluators: dict[str, Any],
                        results: dict[str, tuple[dict[str, EntityScores], dict[str, list[list[str]]]]]) -> None:
    """The model (`log_model` saves and logs it from a staging folder), its config, predictions per
    split (and corpus) as CoNLL, per-type reports. `evaluators[split].datasets[task].sentences`."""
    reports: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as staging:
        staging = Path(staging)
        log_model(staging)
        for split, (scores, predictions) in results.items():
            single = len(predictions) == 1
            for task, predicted in predictions.items():
                dataset = evaluators[split].datasets[task]
                target = staging / split / (f"{split}.conll" if single else f"{task}.conll")
                target.parent.mkdir(parents=True, exist_ok=True)
                write_conll([s.tokens for s in dataset.sentences], predicted, target)
                run.log_artifact(target, "predictions" if single else f"predictions/{split}")
            reports[split] = {task: {"precision": s.precision, "recall": s.recall, "f1": s.f1,
                                     "per_type": s.per_type} for task, s in scores.items()}
    run.log_json(job_dict, "config.json")
    run.log_json(reports, "report.json")


def log_student_report(run: TrackedRun, client, job: TaggerJob, teacher: TeacherKnowledge,
                       history: list[dict[str, float]], final: dict[str, float], model: Tagger,
                       vocabularies: Vocabularies, evaluator: Evaluator, device: torch.device,
                       warn: Callable[[str], None], weigh: bool) -> dict[str, float]:
    """The teacher-quality check and, with `weigh`, the student weighed against its teacher
    (kd.training.weighing); returns the weighing's metrics. Tuning trials skip the weighing: timing
    the teacher costs a pass over the scored split."""
    log_student_diagnostics(run, client, job.distill, teacher.task, teacher.teacher_runs, history, final, warn)
    if not weigh:
        return {}
    try:
        weighed = weigh_student(client, model, vocabularies, teacher.teacher_runs, teacher.teachers, teacher.task,
                                evaluator.datasets[teacher.task].sentences, job.eval_split,
                                final[f"{job.eval_split}_f1"], device, job.training.precision)
    except KdError as error:
        # A cache can outlive its teacher runs; a trained student is not failed for a comparison.
        warn(f"warning: the student was not weighed against its teacher: {error}")
        return {}
    run.log_metrics(weighed, step=len(history))
    return weighed


def run_tagger_job(job: TaggerJob | None, client, checkpoint_dir: Path, *,
                   callbacks: Sequence[EpochCallback] = (), resume_run_id: str | None = None,
                   attach_to: str | None = None, parent_run_id: str | None = None,
                   extra_tags: dict[str, Any] | None = None, log_model: bool = True,
                   on_start: Callable[[str], None] | None = None,
                   warn: Callable[[str], None] = lambda message: print(message, file=sys.stderr)) -> RunSummary:
    """Trains, evaluates and logs one STM, MTM or student. With `resume_run_id`, continues that run
    from its checkpoint with the options it was started with (`job` is then ignored); `attach_to`
    logs into an existing run (the one `mlflow run` made) instead of creating one; `parent_run_id`
    nests the run (tuning trials); `extra_tags` add to or override the standard tags; without
    `log_model` the model and predictions are not logged (trials keep only their metrics);
    `on_start` hears the run id as soon as the run exists; `warn` hears a teacher-quality warning."""
    state: TrainingState | None = None
    if resume_run_id:
        run = TrackedRun.resume(client, resume_run_id)
        state, checkpoint = resume_state(run)
        job = TaggerJob.from_dict(state.job)
    assert job is not None
    device = resolve_device(job.device)
    held_out_devel = "devel" not in job.train_splits
    tasks = load_tasks(job.corpora, _path(job.data_dir), [*job.train_splits, job.eval_split],
                       optional=["devel"] if held_out_devel else [])
    held_out_devel = held_out_devel and all("devel" in data.splits for data in tasks.values())
    vocabularies = build_vocabularies({name: data.sentences(job.train_splits) for name, data in tasks.items()})
    teacher = TeacherKnowledge.gather(job, client, next(iter(tasks.values())), device) if job.distill else None
    if teacher is not None:
        # The student's logits must line up with the teacher's: it takes the teacher's tag order.
        vocabularies.tags = {teacher.task: teacher.tags}
    model, facts = build_tagger(job.model, vocabularies, job.training.seed)
    model.to(device)
    trained: torch.nn.Module = model
    loss_function = supervised_loss(model)
    if teacher is not None:
        trained = StudentModel(model, teacher.widths, job.distill.layers).to(device)
        loss_function = distillation_loss(trained, job.distill, teacher.source(
            next(iter(tasks.values())).sentences(job.train_splits), job.train_splits, job.distill.layers, device))

    def encode(split_of: dict[str, list]) -> dict[str, EncodedDataset]:
        return {name: EncodedDataset(sentences, vocabularies, name) for name, sentences in split_of.items()}

    train_data = encode({name: data.sentences(job.train_splits) for name, data in tasks.items()})
    evaluators = {job.eval_split: Evaluator(model, vocabularies, encode(
        {name: data.splits[job.eval_split] for name, data in tasks.items()}), device, job.training.precision)}
    if held_out_devel and job.eval_split != "devel":
        evaluators["devel"] = Evaluator(model, vocabularies, encode(
            {name: data.splits["devel"] for name, data in tasks.items()}), device, job.training.precision)

    if state is None:
        run = TrackedRun.start(client, job.experiment, job.run_name, {
            "task": ",".join(tasks), "model_kind": job.model_kind, "output": job.model.output,
            "seed": job.training.seed, "git_commit": git_commit(),
            **({"loss": job.distill.loss, **teacher.run_tags()} if teacher else {}), **(extra_tags or {})},
            parent_run_id=parent_run_id, attach_to=attach_to)
        run.log_params(job.params())
        checkpoint = checkpoint_file(checkpoint_dir, run.run_id).resolve()
        run.set_tags({"checkpoint": str(checkpoint)})
        state = TrainingState(job=job.to_dict())
    if on_start is not None:
        on_start(run.run_id)
    with run_status(run):
        if not checkpoint.exists():
            # Saved before the first epoch, so that a run killed before its first epoch's
            # checkpoint is resumed from scratch with its own options, not refused.
            state.save(checkpoint)
        run.log_metrics({"num_parameters": model.num_parameters(),
                         "train_tokens": sum(d.num_tokens for d in train_data.values()),
                         **({"teacher_parameters": float(teacher.parameters)} if teacher else {}),
                         **{k: float(v) for k, v in facts.items()}})

        def evaluate_devel(epoch: int) -> dict[str, float]:
            scores, _ = evaluators["devel"].run()
            return {k: v for k, v in metric_names("devel", scores).items() if k.startswith("devel_f1")}

        optimizers = task_optimizers(model, job.training.learning_rate, job.optimizer_state)
        if trained is not model and len(trained.projections):
            next(iter(optimizers.values())).add_param_group({"params": list(trained.projections.parameters())})
        result = train(
            trained, optimizers, alternating_plan(train_data, job.training.batch_size, job.sampling),
            loss_function, job.training, device,
            evaluate_epoch=evaluate_devel if held_out_devel else None,
            selection_metric="devel_f1" if held_out_devel else None,
            callbacks=callbacks, log_metrics=run.log_metrics, checkpoint_path=checkpoint, state=state)

        final: dict[str, float] = {}
        results = {}
        for split, evaluator in evaluators.items():
            results[split] = evaluator.run()
            final.update(metric_names(split, results[split][0]))
        if result.state.best_epoch is not None:
            final["best_epoch"] = float(result.state.best_epoch)
        final["epochs_trained"] = float(result.state.epoch)
        run.log_metrics(final, step=result.state.epoch)
        if teacher is not None:
            final.update(log_student_report(run, client, job, teacher, result.state.history, final, model,
                                            vocabularies, evaluators[job.eval_split], device, warn, weigh=log_model))
        if log_model:
            log_final_artifacts(run, lambda staging: log_tagger_model(run, save_model(model, vocabularies,
                                                                                      staging / "tagger")),
                                job.to_dict(), evaluators, results)
        else:
            run.log_json(job.to_dict(), "config.json")
    checkpoint.unlink(missing_ok=True)
    client.delete_tag(run.run_id, "checkpoint")
    return RunSummary(run_id=run.run_id, metrics=final)


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None

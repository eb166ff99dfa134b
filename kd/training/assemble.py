"""Everything one training of a TaggerJob needs, built from the job and, for a student, what its
teacher knows: the data, vocabularies, model, the module that is trained, loss, epoch plan,
optimizers and evaluators. No tracking store is involved: `kd.training.tagger_job` tracks an
assembly, benchmarks and tests train one directly."""
from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kd.cache.knowledge import TeacherKnowledge
from kd.data.batching import EncodedDataset
from kd.data.conll import read_unlabelled
from kd.data.text.overlap import check_eval_overlap
from kd.data.types import Sentence
from kd.data.vocab import Vocabularies, build_vocabularies
from kd.errors import KdError
from kd.models.device import resolve_device
from kd.models.predict import predict_tags
from kd.models.tagger import Tagger
from kd.tracking.metrics import late_gains
from kd.training.adam import Optimizer
from kd.training.distillation import StudentModel, distillation_loss
from kd.training.evaluate import EntityScores, Evaluator, metric_names
from kd.training.job_definition import RunPlan, TaggerJob, TaskData, build_tagger, load_tasks
from kd.training.loop import (EpochPlan, LossFunction, Trainable, TrainingHooks, TrainingResult, TrainingState,
                              train)
from kd.training.schedule import alternating_plan, supervised_loss, task_optimizers
from kd.training.unlabelled import UnlabelledPlan

# split -> (scores per corpus, predictions per corpus)
SplitResults = dict[str, tuple[dict[str, EntityScores], dict[str, list[list[str]]]]]


@dataclass
class Assembly:
    job: TaggerJob
    device: torch.device
    tasks: dict[str, TaskData]
    vocabularies: Vocabularies
    model: Tagger  # the tagger that is saved and scored
    trained: torch.nn.Module  # what the optimizers step: the tagger, or it with a student's projections
    facts: dict[str, Any]  # worth logging: pretrained words found, ...
    loss: LossFunction
    plan: EpochPlan
    optimizers: dict[str, Optimizer]
    train_data: dict[str, EncodedDataset]
    evaluators: dict[str, Evaluator]  # the scored split, and devel when it is held out
    selects_on_devel: bool  # devel is held out: the best devel epoch's weights are kept
    teacher: TeacherKnowledge | None = None

    def train(self, *, hooks: TrainingHooks | None = None, checkpoint_path: Path | None = None,
              state: TrainingState | None = None) -> TrainingResult:
        if isinstance(self.plan, UnlabelledPlan):
            # Its draws continue through the text from epoch to epoch: a resumed run goes on from its epoch.
            self.plan.epoch = state.epoch if state is not None else 0
        return train(Trainable(self.trained, self.optimizers, self.plan, self.loss), self.job.training, self.device,
                     **devel_selection(self.evaluators, self.selects_on_devel), checkpoint_path=checkpoint_path,
                     state=state, hooks=hooks)

    def score(self, result: TrainingResult) -> tuple[dict[str, float], SplitResults]:
        return score_splits(self.evaluators, result.state)

    def size_metrics(self) -> dict[str, float]:
        return {"num_parameters": float(self.model.num_parameters()),
                "train_tokens": float(sum(d.num_tokens for d in self.train_data.values())),
                **({"teacher_parameters": float(self.teacher.parameters)} if self.teacher else {}),
                **{k: float(v) for k, v in self.facts.items()}}


def devel_selection(evaluators: dict[str, Any], selects_on_devel: bool) -> dict[str, Any]:
    """`train`'s arguments that keep the weights of the best devel F1 epoch, when devel is held out
    (`evaluators` has it); none otherwise. Shared by the BiLSTM and transformer jobs."""
    if not selects_on_devel:
        return {}

    def evaluate_devel(epoch: int) -> dict[str, float]:
        result = evaluators["devel"].run()
        metrics = {k: v for k, v in metric_names("devel", result[0]).items() if k.split("/")[-1] == "devel_f1"}
        evaluators["devel"].remember(epoch, metrics["devel_f1"], result)
        return metrics
    return {"evaluate_epoch": evaluate_devel, "selection_metric": "devel_f1"}


def score_splits(evaluators: dict[str, Any], state: TrainingState,
                 names: Callable[[str, dict[str, EntityScores]], dict[str, float]] = metric_names,
                 timed_split: str | None = None) -> tuple[dict[str, float], SplitResults]:
    """The final metrics of every evaluated split (`names` names them), with the best and last
    epoch, and the scores and predictions behind them; with `timed_split`, the words per second of
    predicting that split. Shared by the BiLSTM and transformer jobs."""
    final: dict[str, float] = {}
    results: SplitResults = {}
    for split, evaluator in evaluators.items():
        started = time.perf_counter()
        # The best devel epoch's weights were restored: its result from training is theirs.
        recalled = evaluator.recall(state.best_epoch) if split != timed_split else None
        results[split] = recalled or evaluator.run()
        if split == timed_split:
            words = sum(d.num_tokens for d in evaluator.datasets.values())
            final["predict_tokens_per_second"] = words / (time.perf_counter() - started)
        final.update(names(split, results[split][0]))
    if state.best_epoch is not None:
        final["best_epoch"] = float(state.best_epoch)
    final["epochs_trained"] = float(state.epoch)
    final.update(late_gains(state.history))
    return final, results


def load_job_tasks(job: RunPlan) -> dict[str, TaskData]:
    """The job's corpora (a TaggerJob's or TransformerJob's) with its training and scored splits,
    and devel where it is held out."""
    held_out_devel = "devel" not in job.train_splits
    return load_tasks(job.corpora, Path(job.data_dir) if job.data_dir else None, [*job.train_splits, job.eval_split],
                      optional=["devel"] if held_out_devel else [])


def assemble(job: TaggerJob, teacher: TeacherKnowledge | None = None, *,
             tasks: dict[str, TaskData] | None = None) -> Assembly:
    """The training of `job`: a student (`job.distill`) learns from `teacher`; `tasks` are the
    job's corpora when already loaded (`load_job_tasks`)."""
    if (job.distill is None) != (teacher is None):
        raise KdError("a student needs its teacher's knowledge, and only a student has a teacher")
    device = resolve_device(job.device)
    tasks = load_job_tasks(job) if tasks is None else tasks
    train_sentences = {name: data.sentences(job.train_splits) for name, data in tasks.items()}
    unlabelled = read_unlabelled(job.distill.unlabelled) if job.distill and job.distill.unlabelled else []
    overlap = check_eval_overlap(job.distill.unlabelled, [s.tokens for s in unlabelled],
                                 [data.directory for data in tasks.values()],
                                 job.distill.allow_eval_overlap) if unlabelled else None
    labelled = {name: len(sentences) for name, sentences in train_sentences.items()}
    # A student's unlabelled sentences are training text like the rest (words, characters, batches);
    # only the hard-label term skips them.
    train_sentences = {name: [*sentences, *unlabelled] for name, sentences in train_sentences.items()}
    vocabularies = build_vocabularies(train_sentences)
    if teacher is not None:
        # The student's logits must line up with the teacher's: it takes the teacher's tag order.
        vocabularies.tags = {teacher.task: teacher.tags}
    model, facts = build_tagger(job.model, vocabularies, job.training.seed)
    if unlabelled:
        facts.update(unlabelled_sentences=len(unlabelled), unlabelled_tokens=sum(len(s) for s in unlabelled))
    if overlap is not None:
        facts.update(unlabelled_eval_overlap=overlap.count)
    model.to(device)
    trained, loss = _trained_module(job, model, teacher, train_sentences, device)
    optimizers = task_optimizers(model, job.training.learning_rate, job.optimizer_state)
    if trained is not model and len(trained.projections):
        next(iter(optimizers.values())).add_param_group({"params": list(trained.projections.parameters())})
    train_data = _encode(train_sentences, vocabularies)
    selects_on_devel, splits = scored_splits(job, tasks)
    predict = functools.partial(predict_tags_of, model, vocabularies, device, job.training.precision)
    evaluators = {split: Evaluator(predict, _encode({name: data.splits[split] for name, data in tasks.items()},
                                                    vocabularies)) for split in splits}
    return Assembly(job=job, device=device, tasks=tasks, vocabularies=vocabularies, model=model, trained=trained,
                    facts=facts, loss=loss, plan=_epoch_plan(job, train_data, labelled),
                    optimizers=optimizers, train_data=train_data, evaluators=evaluators,
                    selects_on_devel=selects_on_devel, teacher=teacher)


def _trained_module(job: TaggerJob, model: Tagger, teacher: TeacherKnowledge | None,
                    train_sentences: dict[str, list[Sentence]],
                    device: torch.device) -> tuple[torch.nn.Module, LossFunction]:
    """The tagger and its supervised loss, or for a student the tagger with its projections to the
    teacher's layers and the distillation loss over the teacher's targets."""
    if teacher is None:
        return model, supervised_loss(model)
    student = StudentModel(model, teacher.widths, job.distill.layers).to(device)
    source = teacher.source(train_sentences[teacher.task], job.distill.target_splits(job.train_splits),
                            job.distill.layers, device)
    return student, distillation_loss(student, job.distill, source)


def scored_splits(job: RunPlan, tasks: dict[str, TaskData]) -> tuple[bool, list[str]]:
    """Whether the best devel epoch is kept (devel held out, and every corpus has it), and the
    splits scored: the job's, and devel for that selection."""
    selects_on_devel = "devel" not in job.train_splits and all("devel" in d.splits for d in tasks.values())
    return selects_on_devel, [job.eval_split] + (["devel"] if selects_on_devel and job.eval_split != "devel" else [])


def predict_tags_of(model: Tagger, vocabularies: Vocabularies, device: torch.device, precision: str, task: str,
                    dataset: EncodedDataset) -> list[list[str]]:
    return predict_tags(model, dataset, vocabularies, task, device, precision)


def _epoch_plan(job: TaggerJob, train_data: dict[str, EncodedDataset], labelled: dict[str, int]) -> EpochPlan:
    """Every sentence once per epoch, or for a student with an unlabelled ratio its labelled sentences
    and a share of its unlabelled ones."""
    ratio = job.distill.unlabelled_ratio if job.distill else None
    if ratio is None:
        return alternating_plan(train_data, job.training.batch_size, job.sampling)
    ((task, dataset),) = train_data.items()
    return UnlabelledPlan(task, dataset, labelled[task], ratio, job.training.batch_size, job.training.seed)


def _encode(sentences: dict[str, list[Sentence]], vocabularies: Vocabularies) -> dict[str, EncodedDataset]:
    return {name: EncodedDataset(split, vocabularies, name) for name, split in sentences.items()}

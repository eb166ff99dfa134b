"""What a student run shows beyond its scores: its loss terms per epoch as a picture, and whether its
teacher was worth distilling from. A student learns the teacher's outputs; where the teacher scores
below what a single-task model reaches alone on the corpus, the student is pulled towards a worse model
(issue 11: MTMs 8 points below the STMs gave students below both)."""
from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from kd.losses.distill import get_loss
from kd.tracking.runs import TrackedRun
from kd.tracking.metrics import corpus_metric_value
from kd.training.curves import plot_loss_terms
from kd.training.distillation import DistillOptions


@dataclass(frozen=True)
class TeacherCheck:
    split: str
    teacher_f1: float  # the best of the teacher runs on this corpus
    reference_f1: float
    reference: str  # what the teacher was compared with, in words

    @property
    def weaker(self) -> bool:
        return self.teacher_f1 < self.reference_f1

    def message(self, task: str) -> str:
        return (f"warning: the teacher's {self.split} F1 on {task} is {100 * self.teacher_f1:.2f}, below "
                f"{self.reference} ({100 * self.reference_f1:.2f}): distilling from it is unlikely to help")


def corpus_f1(metrics: Mapping[str, float], tags: Mapping[str, str], task: str, split: str) -> float | None:
    """A run's F1 on one corpus: `<task>/<split>_f1` for a multi-task run, `<split>_f1` for a run of that corpus alone."""
    per_corpus = corpus_metric_value(metrics, f"{split}_f1", task)
    if per_corpus is not None:
        return per_corpus
    if tags.get("task") == task:
        return metrics.get(f"{split}_f1")
    return None


def teacher_f1(client, teacher_runs: Sequence[str], task: str) -> tuple[str, float] | None:
    """(split, best F1 of the teacher runs on the corpus): devel where every teacher scored it, else test."""
    runs = [client.get_run(run_id) for run_id in teacher_runs]
    for split in ("devel", "test"):
        scores = [corpus_f1(r.data.metrics, r.data.tags, task, split) for r in runs]
        if scores and all(s is not None for s in scores):
            return split, max(scores)
    return None


def single_task_f1(client, experiment_id: str, task: str, split: str) -> float | None:
    """The mean F1 of the finished single-task models of the corpus in the experiment, if there are any."""
    if "'" in task:  # MLflow's filter language has no escape for a quote inside a value
        return None
    runs = client.search_runs([experiment_id], filter_string=f"tags.model_kind = 'stm' and tags.task = '{task}' "
                                                             f"and attributes.status = 'FINISHED'", max_results=1000)
    scores = [corpus_f1(r.data.metrics, r.data.tags, task, split) for r in runs]
    scores = [s for s in scores if s is not None]
    return statistics.mean(scores) if scores else None


def check_teacher(client, experiment_id: str, teacher_runs: Sequence[str], task: str,
                  student_metrics: Mapping[str, float]) -> TeacherCheck | None:
    """The teacher against the single-task models of the corpus in the same experiment, or, where there
    are none, against the student itself (scored on the same split). None when the teacher runs carry no
    score for the corpus."""
    found = teacher_f1(client, teacher_runs, task)
    if found is None:
        return None
    split, teacher = found
    reference = single_task_f1(client, experiment_id, task, split)
    if reference is not None:
        return TeacherCheck(split, teacher, reference, "the single-task models' mean in this experiment")
    own = student_metrics.get(f"{split}_f1")
    if own is None:
        return None
    return TeacherCheck(split, teacher, own, "this student's")


def log_student_diagnostics(run: TrackedRun, client, options: DistillOptions, task: str, teacher_runs: Sequence[str],
                            history: list[dict[str, float]], final: dict[str, float],
                            warn: Callable[[str], None]) -> None:
    """The loss terms per epoch as a picture (`loss_terms.png`), and the teacher-quality check: the
    teacher's F1 as metric `teacher_f1`, tag `teacher_weaker`, and a warning (tag and `warn`) when the
    teacher scores below the single-task models of the corpus (or below this student, without them)."""
    with tempfile.TemporaryDirectory() as staging:
        plot = plot_loss_terms(history, get_loss(options.loss).term_weights(options.weights()),
                               Path(staging) / "loss_terms.png")
        if plot is not None:
            run.log_artifact(plot)
    check = check_teacher(client, run.get().info.experiment_id, teacher_runs, task, final)
    if check is None:
        return
    run.log_metrics({"teacher_f1": check.teacher_f1})
    tags = {"teacher_weaker": str(check.weaker).lower()}
    if check.weaker:
        tags["teacher_warning"] = check.message(task)
        warn(check.message(task))
    run.set_tags(tags)

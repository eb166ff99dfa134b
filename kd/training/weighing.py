"""What a user weighs when choosing a student over its teacher, logged on every student run:
parameters and bytes of each, prediction speed of each measured the same way on the same machine,
and the student's F1 as a fraction of the teacher's."""
from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from kd.cache.protocol import TeacherModel
from kd.cache.teachers import BiLSTMTeacher, load_teacher, teacher_outputs_for_sentences
from kd.data.types import Sentence
from kd.training.assemble import Assembly
from kd.training.student_diagnostics import corpus_f1

# Sentences of the untimed first pass: the first call of a model pays for allocations and, for a
# transformer, lazy kernel set-up (the first pass of MiniLM-L6 over 64 sentences took 3x a later one).
WARM_UP_SENTENCES = 64


def model_bytes(module: torch.nn.Module) -> int:
    """Bytes of the weights a saved model holds: its state dict (parameters and persistent buffers)."""
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def tokens_per_second(teachers: Sequence[TeacherModel], task: str, sentences: Sequence[Sentence],
                      device: torch.device, precision: str = "fp32") -> float:
    """Words per second of producing the logits of every sentence (encoding the words included),
    after an untimed warm-up; an ensemble runs all its members."""
    teacher_outputs_for_sentences(teachers, task, sentences[:WARM_UP_SENTENCES], ["logits"], device, precision)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    teacher_outputs_for_sentences(teachers, task, sentences, ["logits"], device, precision)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return sum(len(s) for s in sentences) / (time.perf_counter() - started)


def teacher_f1(client, teacher_runs: Sequence[str], task: str, split: str,
               train_splits: Sequence[str]) -> tuple[float | None, bool]:
    """The best F1 of the teacher runs on `task`'s `split`, read as the teacher check reads it, and
    whether every teacher trained on the student's `train_splits`: a student trained on train over a
    teacher trained on train+devel (issue 26) is not a fraction of like with like."""
    runs = [client.get_run(run_id) for run_id in teacher_runs]
    alike = all(set(r.data.params.get("train_splits", "").split(",")) == set(train_splits) for r in runs)
    found = [f for f in (corpus_f1(r.data.metrics, r.data.tags, task, split) for r in runs) if f is not None]
    return (max(found) if found else None), alike


def weigh_student(client, assembly: Assembly, student_f1: float) -> dict[str, float]:
    """Metrics comparing a student's assembly with its teacher(s): the teachers when already loaded
    (live distillation), else loaded from their runs. Speeds are over the scored split;
    `f1_fraction_of_teacher` only where the teachers trained on the student's training splits."""
    teacher, split, device = assembly.teacher, assembly.job.eval_split, assembly.device
    task, teachers, teacher_runs, precision = (teacher.task, teacher.teachers, teacher.teacher_runs,
                                               assembly.job.training.precision)
    sentences = assembly.evaluators[split].datasets[task].sentences
    student = assembly.model
    if teachers is None:
        teachers = [load_teacher(run_id, client, client.tracking_uri, device) for run_id in teacher_runs]
    as_teacher = BiLSTMTeacher("student", student, assembly.vocabularies, [task], None)
    metrics = {"student_bytes": float(model_bytes(student)),
               "teacher_bytes": float(sum(model_bytes(t.model) for t in teachers)),
               "predict_tokens_per_second": tokens_per_second([as_teacher], task, sentences, device, precision),
               "teacher_predict_tokens_per_second": tokens_per_second(teachers, task, sentences, device, precision)}
    metrics["size_ratio"] = metrics["teacher_bytes"] / metrics["student_bytes"]
    metrics["speedup"] = metrics["predict_tokens_per_second"] / metrics["teacher_predict_tokens_per_second"]
    reference, alike = teacher_f1(client, teacher_runs, task, split, assembly.job.train_splits)
    if reference:
        metrics[f"teacher_{split}_f1"] = reference
        if alike:
            metrics["f1_fraction_of_teacher"] = student_f1 / reference
    return metrics

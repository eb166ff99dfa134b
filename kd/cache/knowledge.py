"""What a student learns from, whether it comes from a cache run or from live teachers: the teacher's
tags (in logit order), layer widths, size, kinds and outputs, and the source of per-batch targets.

`TeacherKnowledge.from_cache` and `from_teachers` need no tracking store (benchmarks and tests build
students with them); `gather` finds the cache or teacher runs a student's options name."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from kd.cache.build import open_cache_run
from kd.cache.protocol import TeacherModel, check_layers
from kd.cache.store import CachedTargets, CacheReader
from kd.cache.teachers import check_ensemble, ensemble_kind, ensemble_outputs, layer_widths, load_teacher
from kd.data.batching import Batch
from kd.data.types import UNLABELLED_SPLIT, Sentence
from kd.errors import FieldError, KdError


class CachedTargetSource:
    """Teacher targets read from a cache, checked to belong to the student's sentences."""

    def __init__(self, reader: CacheReader, task: str, splits: Sequence[str], sentences: Sequence[Sentence],
                 layers: Sequence[str], device: torch.device) -> None:
        self.targets_of = CachedTargets(reader, task, splits, [s.tokens for s in sentences], layers,
                                        tags={t for s in sentences for t in s.tags})
        self.device = device

    def __call__(self, batch: Batch) -> dict[str, torch.Tensor]:
        width = batch.words.shape[1]
        return {k: v.to(self.device, non_blocking=True) for k, v in self.targets_of.gather(batch.sentence_ids, width).items()}


class LiveTargetSource:
    """Teacher targets computed on the fly by the teacher(s) (any kd.cache.protocol.TeacherModel),
    for users without a cache."""

    def __init__(self, teachers: Sequence[TeacherModel], task: str, sentences: Sequence[Sentence],
                 layers: Sequence[str], device: torch.device) -> None:
        known = set(teachers[0].tags(task))
        unknown = sorted({t for s in sentences for t in s.tags} - known)
        if unknown:
            raise KdError(f"the teacher's tag set for {task} lacks {', '.join(unknown)}: it was trained on other data")
        self.teachers = list(teachers)
        self.layers = list(layers)
        self.device = device
        self.prepared = [t.prepare(task, sentences, device, "fp32") for t in teachers]

    def __call__(self, batch: Batch) -> dict[str, torch.Tensor]:
        return ensemble_outputs(self.teachers, self.prepared, batch.sentence_ids.numpy(), self.layers, self.device,
                                "fp32")


@dataclass
class TeacherKnowledge:
    """What a student learns from, whether it comes from a cache run or from live teachers."""

    task: str
    tags: list[str]
    widths: dict[str, int]
    ensemble: str
    teacher_runs: list[str]
    cache_run: str | None
    parameters: int
    teacher_kinds: list[str] = field(default_factory=list)  # per teacher (empty: a cache older than the field)
    teacher_outputs: list[str] = field(default_factory=list)  # per teacher: softmax or crf
    reader: CacheReader | None = None
    teachers: list[TeacherModel] | None = None

    @classmethod
    def from_cache(cls, reader: CacheReader, task: str, cache_run: str) -> "TeacherKnowledge":
        manifest = reader.manifest
        return cls(task=task, tags=manifest.tasks[task], widths=manifest.widths[task], ensemble=manifest.ensemble,
                   teacher_runs=manifest.teacher_runs, cache_run=cache_run,
                   parameters=manifest.teacher_parameters.get(task, 0), teacher_kinds=list(manifest.teacher_kinds),
                   teacher_outputs=list(manifest.teacher_outputs), reader=reader)

    @classmethod
    def from_teachers(cls, teachers: Sequence[TeacherModel], task: str) -> "TeacherKnowledge":
        return cls(task=task, tags=teachers[0].tags(task), widths=layer_widths(teachers[0], task),
                   ensemble=ensemble_kind(teachers), teacher_runs=[t.run_id for t in teachers], cache_run=None,
                   parameters=max(t.num_parameters(task) for t in teachers), teacher_kinds=[t.kind for t in teachers],
                   teacher_outputs=[t.output for t in teachers], teachers=list(teachers))

    @classmethod
    def gather(cls, options: Any, splits: Sequence[str], client, task: str,
               device: torch.device) -> "TeacherKnowledge":
        """From a student's distillation `options` (`cache_run` or `teacher_runs`, `loss`, `layers`),
        for the corpus `task` and the splits whose targets the student reads (its training splits,
        then `unlabelled` when it has such sentences: DistillOptions.target_splits)."""
        if options.cache_run:
            return cls._from_cache_run(options, splits, client, task)
        teachers = [load_teacher(run_id, client, client.tracking_uri, device) for run_id in options.teacher_runs]
        if task not in teachers[0].task_names:
            raise FieldError("teacher_runs", ",".join(options.teacher_runs), f"the teacher has no corpus {task!r}; "
                             f"it has {', '.join(teachers[0].task_names)}")
        check_layers(teachers[0], options.layers, f"--loss {options.loss}")
        check_ensemble(teachers, options.layers)
        return cls.from_teachers(teachers, task)

    @classmethod
    def _from_cache_run(cls, options: Any, train_splits: Sequence[str], client, task: str) -> "TeacherKnowledge":
        reader, _ = open_cache_run(options.cache_run, client, client.tracking_uri)
        manifest = reader.manifest
        if task not in manifest.tasks:
            raise FieldError("cache_run", options.cache_run, f"the cache has no corpus {task!r}; it has "
                             f"{', '.join(manifest.tasks)}")
        absent = [layer for layer in options.layers if layer not in manifest.layers]
        if absent:
            raise FieldError("cache_run", options.cache_run, f"--loss {options.loss} needs the {', '.join(absent)} "
                             f"layer(s), the cache has {', '.join(manifest.layers)} "
                             f"(re-run kd cache-logits --layers {','.join(options.layers)})")
        missing = [s for s in train_splits if s not in manifest.splits[task]]
        if missing:
            hint = (" (re-run kd cache-logits --unlabelled FILE)" if UNLABELLED_SPLIT in missing else "")
            raise FieldError("cache_run", options.cache_run, f"{task} has no cached {', '.join(missing)} split "
                             f"(cached: {', '.join(manifest.splits[task])}){hint}")
        return cls.from_cache(reader, task, options.cache_run)

    def source(self, sentences: Sequence[Sentence], splits: Sequence[str], layers: Sequence[str],
               device: torch.device) -> CachedTargetSource | LiveTargetSource:
        if self.reader is not None:
            return CachedTargetSource(self.reader, self.task, splits, sentences, layers, device)
        return LiveTargetSource(self.teachers, self.task, sentences, layers, device)

    def run_tags(self) -> dict[str, str]:
        return {"cache_run": self.cache_run or "", "teacher_runs": ",".join(self.teacher_runs),
                "ensemble": self.ensemble}

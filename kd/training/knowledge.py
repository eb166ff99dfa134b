"""What a student learns from, whether it comes from a cache run or from live teachers: tags,
layer widths, the teacher's size, and the source of per-batch targets."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from kd.errors import KdError
from kd.training.distillation import CachedTargetSource, LiveTargetSource
from kd.training.jobs import TaskData


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
    reader: Any = None
    teachers: Any = None

    @classmethod
    def gather(cls, job: Any, client, data: TaskData, device: torch.device) -> "TeacherKnowledge":
        """From `job.distill` (a cache run or teacher runs), for the corpus `data` and `job.train_splits`."""
        options = job.distill
        task = data.name
        if options.cache_run:
            from kd.cache.build import open_cache_run

            reader, _ = open_cache_run(options.cache_run, client, client.tracking_uri)
            manifest = reader.manifest
            if task not in manifest.tasks:
                raise KdError(f"--cache {options.cache_run}: the cache has no corpus {task!r}; it has "
                              f"{', '.join(manifest.tasks)}")
            absent = [layer for layer in options.layers if layer not in manifest.layers]
            if absent:
                raise KdError(f"--cache {options.cache_run}: --loss {options.loss} needs the {', '.join(absent)} "
                              f"layer(s), the cache has {', '.join(manifest.layers)} "
                              f"(re-run kd cache-logits --layers {','.join(options.layers)})")
            missing = [s for s in job.train_splits if s not in manifest.splits[task]]
            if missing:
                raise KdError(f"--cache {options.cache_run}: {task} has no cached {', '.join(missing)} split "
                              f"(cached: {', '.join(manifest.splits[task])})")
            return cls(task=task, tags=manifest.tasks[task], widths=manifest.widths[task], ensemble=manifest.ensemble,
                       teacher_runs=manifest.teacher_runs, cache_run=options.cache_run,
                       parameters=manifest.teacher_parameters.get(task, 0), reader=reader)
        from kd.cache.protocol import check_layers
        from kd.cache.teachers import check_ensemble, ensemble_kind, layer_widths, load_teacher

        teachers = [load_teacher(run_id, client, client.tracking_uri, device) for run_id in options.teacher_runs]
        if task not in teachers[0].task_names:
            raise KdError(f"--teacher: the teacher has no corpus {task!r}; it has {', '.join(teachers[0].task_names)}")
        check_layers(teachers[0], options.layers, f"--loss {options.loss}")
        check_ensemble(teachers, options.layers)
        return cls(task=task, tags=teachers[0].tags(task), widths=layer_widths(teachers[0], task),
                   ensemble=ensemble_kind(teachers), teacher_runs=list(options.teacher_runs), cache_run=None,
                   parameters=max(t.num_parameters(task) for t in teachers), teachers=teachers)

    def source(self, sentences, splits, layers, device):
        if self.reader is not None:
            return CachedTargetSource(self.reader, self.task, splits, sentences, layers, device)
        return LiveTargetSource(self.teachers, self.task, sentences, layers, device)

    def run_tags(self) -> dict[str, str]:
        return {"cache_run": self.cache_run or "", "teacher_runs": ",".join(self.teacher_runs),
                "ensemble": self.ensemble}

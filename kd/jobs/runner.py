"""One cell, run in a worker process through the library (the same calls `kd train`, `kd distill`
and `kd cache-logits` make), never a `kd` process per cell.

Before training, a cell looks at its runs: a finished one is the result (a plan run again skips
it); an interrupted tagger run whose checkpoint is still there is resumed (a transformer teacher has
none: it starts again); a run alive in another process on this host is waited for. A new run claims
the cell by its tags; when two processes claim one cell at once, the run started first wins and the
other deletes its own and waits for it. After finishing, a second look deletes any later finished
twin, so a cell never shows two finished runs."""
from __future__ import annotations

import os
import socket
import sys
import time
import traceback
from dataclasses import dataclass

from kd.errors import KdError
from kd.jobs.cells import Cell, tagger_job, transformer_job
from kd.jobs.plan_runs import (CELL_TAG, PLAN_RUN_TAG, cell_runs, owned_by_live_process, resumable_checkpoint,
                              run_order)
from kd.tracking.runs import TrackedRun

WAIT_SECONDS = 2.0


@dataclass(frozen=True)
class CellContext:
    """Where a cell runs and logs: the same for every cell of one plan run."""

    tracking_uri: str
    experiment: str
    plan_run_id: str
    data_dir: str  # absolute: workers may start anywhere
    checkpoint_dir: str
    threads: int = 1
    device: str = "auto"


@dataclass
class CellResult:
    cell_id: str
    label: str
    status: str  # trained, resumed, reused (finished before), failed, blocked (a cell it uses failed)
    run_id: str | None = None
    message: str = ""
    seconds: float = 0.0  # the task's wall time in the worker
    library_seconds: float = 0.0  # of which in the library call that trains or caches
    worker: str = ""
    started_at: float = 0.0  # the task's start and end (seconds since the epoch), for the gaps between tasks
    ended_at: float = 0.0

    @property
    def ok(self) -> bool:
        return self.run_id is not None


def run_cell(cell: Cell, context: CellContext, *inputs: CellResult) -> CellResult:
    """The Dask task of a cell; `inputs` are the results of the cells it depends on, in order.
    Failures are results, not exceptions: the plan goes on with the cells that do not need this one."""
    started, started_at = time.perf_counter(), time.time()
    failed_input = next((i for i in inputs if not i.ok), None)
    if failed_input is not None:
        return CellResult(cell.cell_id, cell.label, "blocked", message=f"needs {failed_input.label}, which failed")
    try:
        import torch

        torch.set_num_threads(context.threads)
        from kd.tracking.backend import open_client

        result = CellRunner(cell, context, open_client(context.tracking_uri), [i.run_id for i in inputs]).run()
    except Exception as error:  # noqa: BLE001 - a failed cell is reported, and its traceback kept in the worker log
        traceback.print_exc(file=sys.stderr)
        message = str(error) if isinstance(error, KdError) else f"{type(error).__name__}: {error}"
        result = CellResult(cell.cell_id, cell.label, "failed", message=" ".join(message.split()))
    result.seconds = time.perf_counter() - started
    result.started_at, result.ended_at = started_at, time.time()
    result.worker = f"{socket.gethostname()}:{os.getpid()}"
    return result


class CellRunner:
    def __init__(self, cell: Cell, context: CellContext, client, input_runs: list[str]) -> None:
        self.cell, self.context, self.client, self.input_runs = cell, context, client, input_runs

    def result(self, status: str, run_id: str, library_seconds: float = 0.0) -> CellResult:
        return CellResult(self.cell.cell_id, self.cell.label, status, run_id, library_seconds=library_seconds)

    def run(self) -> CellResult:
        while True:
            runs = cell_runs(self.client, self.context.experiment, self.cell.cell_id)
            finished = [r for r in runs if r.info.status == "FINISHED"]
            if finished:
                return self.result("reused", finished[0].info.run_id)
            live = [r for r in runs if owned_by_live_process(r)]
            if live:
                self.wait_for(live[0].info.run_id)
                continue
            resumable = [r for r in runs if self.resumable and resumable_checkpoint(r) is not None]
            if resumable:
                return self.finish("resumed", *self.resume(resumable[-1].info.run_id))
            run = self.claim()
            if run is None:
                continue
            return self.finish("trained", *self.execute(run))

    @property
    def resumable(self) -> bool:
        """Tagger cells resume from their checkpoint. A cache is rebuilt, and a transformer teacher
        trained again from its pretrained encoder (`kd train-teacher --resume` continues one; plans
        do not yet)."""
        return self.cell.kind not in ("cache", "text", "study") and self.cell.config["job"] != "transformer"

    def inputs(self) -> tuple[list[str], str | None]:
        """The runs the cell's job uses and its text file: a text cell's run is the last input of a
        cache or student with a text specification; a user's file is where the plan names it."""
        text = self.cell.config.get("unlabelled")
        if not text:
            return list(self.input_runs), None
        if text.get("cell"):
            from kd.jobs.plan_text import text_file

            return list(self.input_runs[:-1]), text_file(self.client, self.input_runs[-1], self.context.checkpoint_dir)
        return list(self.input_runs), dict(self.cell.paths)["unlabelled"]

    def tags(self) -> dict[str, str]:
        cell = self.cell
        tags = {CELL_TAG: cell.cell_id, PLAN_RUN_TAG: self.context.plan_run_id, "plan_cell": cell.label,
                f"plan_{cell.kind}": cell.name}
        if cell.seed is not None:
            tags["seed"] = str(cell.seed)
        return tags

    def claim(self) -> TrackedRun | None:
        """A new run for the cell, or None when another process claimed it first (its run is then
        waited for by the caller's next look)."""
        mine = TrackedRun.start(self.client, self.context.experiment, self.cell.run_name, self.tags())
        contenders = [r for r in cell_runs(self.client, self.context.experiment, self.cell.cell_id)
                      if r.info.status in ("RUNNING", "FINISHED")]
        first = min(contenders, key=run_order)
        if first.info.run_id == mine.run_id:
            return mine
        self.client.delete_run(mine.run_id)
        self.wait_for(first.info.run_id)
        return None

    def wait_for(self, run_id: str) -> None:
        """Until another process's run of this cell ends (or its process is found gone)."""
        from kd.tracking.runs import fail_if_abandoned

        while fail_if_abandoned(self.client, self.client.get_run(run_id)).info.status == "RUNNING":
            time.sleep(WAIT_SECONDS)

    def execute(self, run: TrackedRun) -> tuple[str, float]:
        context, cell = self.context, self.cell
        started = time.perf_counter()
        input_runs, text = self.inputs()
        if cell.kind == "text":
            from kd.jobs.plan_text import build_text_cell

            build_text_cell(cell.config, dict(cell.paths), context.data_dir, run)
            run.finish()
        elif cell.config["job"] in ("study", "refit"):
            from kd.jobs.plan_tuned import run_refit_cell, run_study_cell

            (run_study_cell if cell.kind == "study" else run_refit_cell)(cell, context, self.client, input_runs, text, run)
        elif cell.kind == "cache":
            from kd.cache.build import CacheJob, build_cache

            job = CacheJob(teacher_runs=input_runs, tasks=list(cell.config["tasks"]),
                           splits=list(cell.config["splits"]), layers=list(cell.config["layers"]),
                           dtype=cell.config["dtype"], data_dir=context.data_dir, device=context.device,
                           experiment=context.experiment, run_name=cell.run_name, unlabelled=text)
            build_cache(job, self.client, context.tracking_uri, attach_to=run.run_id)
        elif cell.config["job"] == "transformer":
            from pathlib import Path

            from kd.training.transformer_job import run_transformer_job

            job = transformer_job(cell.config, cell.base or "", data_dir=context.data_dir,
                                  experiment=context.experiment, run_name=cell.run_name, device=context.device)
            run_transformer_job(job, self.client, Path(context.checkpoint_dir), attach_to=run.run_id)
        else:
            from pathlib import Path

            from kd.training.tagger_job import RunPlacement, run_tagger_job

            job = tagger_job(cell.config, data_dir=context.data_dir, experiment=context.experiment,
                             run_name=cell.run_name, device=context.device,
                             cache_run=input_runs[0] if input_runs else None, unlabelled=text)
            run_tagger_job(job, self.client, Path(context.checkpoint_dir), placement=RunPlacement(attach_to=run.run_id))
        return run.run_id, time.perf_counter() - started

    def resume(self, run_id: str) -> tuple[str, float]:
        from pathlib import Path

        from kd.training.tagger_job import run_tagger_job

        started = time.perf_counter()
        self.client.set_tag(run_id, PLAN_RUN_TAG, self.context.plan_run_id)
        run_tagger_job(None, self.client, Path(self.context.checkpoint_dir), resume_run_id=run_id)
        return run_id, time.perf_counter() - started

    def finish(self, status: str, run_id: str, library_seconds: float) -> CellResult:
        """The cell's result after the check for a finished twin: of two, the later is deleted."""
        finished = [r for r in cell_runs(self.client, self.context.experiment, self.cell.cell_id)
                    if r.info.status == "FINISHED"]
        for twin in finished[1:]:
            self.client.delete_run(twin.info.run_id)
        if finished and finished[0].info.run_id != run_id:
            return self.result("reused", finished[0].info.run_id)
        return self.result(status, run_id, library_seconds)

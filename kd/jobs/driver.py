"""What `kd plan run` and `kd plan status` do: resolve a plan into cells (checking every name, the
corpora and the cluster before any cell starts), run them under one plan run, and tell where each
stands."""
from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kd.errors import KdError
from kd.jobs.cells import Cell, CellGraph, expand
from kd.jobs.plan_data import PlanData, corpus_digest, corpus_dirs, prepare_data
from kd.jobs.executor import ExecutorOptions, dask_client, run_cells
from kd.jobs.plan import Plan
from kd.jobs.runner import CellContext, CellResult
from kd.jobs.plan_runs import (cell_state, cells_summary, plan_identity, runs_by_cell, start_plan_run)


@dataclass
class ResolvedPlan:
    plan: Plan
    data: PlanData
    graph: CellGraph
    plan_id: str
    work_dir: Path

    @property
    def cells(self) -> dict[str, Cell]:
        return self.graph.cells


def resolve(plan: Plan, work_dir: Path) -> ResolvedPlan:
    """The plan's corpora found (and subsampled into `work_dir`), and its cells."""
    teacher_corpora = [c for t in plan.teachers.values() for c in t.corpora if c not in plan.corpora]
    dirs = corpus_dirs([*plan.corpora, *teacher_corpora], plan.data_dir, f"{plan.path}: corpora")
    renamed = [name for name in plan.corpora if name not in dirs]
    if renamed:  # a folder named CORPUS-IOB: the corpus is CORPUS
        raise KdError(f"{plan.path}: corpora: {renamed[0]!r}: name the corpus as {', '.join(dirs)} lists it")
    data = prepare_data(dirs, plan.subsample, work_dir.resolve())
    return with_cells(plan, data, work_dir, text_sources(plan, dirs))


def with_cells(plan: Plan, data: PlanData, work_dir: Path, sources: dict[str, tuple[str, str]]) -> ResolvedPlan:
    """The plan's cells over its found corpora (`data`) and the corpora its text reads (`sources`,
    text_sources); errors name the plan file."""
    try:
        graph = expand(plan, data.digests, sources)
    except KdError as error:
        raise KdError(f"{plan.path}: {error}") from None
    return ResolvedPlan(plan=plan, data=data, graph=graph, plan_id=plan_identity(graph.cells, plan.tables),
                        work_dir=work_dir.resolve())


def outline(plan: Plan, work_dir: Path) -> ResolvedPlan:
    """`resolve`, except that corpora of kd's registry not found under the data folder (not
    downloaded yet) are kept, with unknown sizes and digests: what `kd plan show` needs to count
    cells before a download. Unknown corpus names are still an error."""
    from kd.data.corpora import REGISTRY, find_local_corpus

    known = {name.lower(): name for name in REGISTRY}
    teacher_corpora = [c for t in plan.teachers.values() for c in t.corpora if c not in plan.corpora]
    wanted = [*plan.corpora, *teacher_corpora]
    missing = tuple(c for c in wanted if c.lower() in known and find_local_corpus(c, plan.data_dir) is None)
    if not missing:
        return resolve(plan, work_dir)
    present = [c for c in wanted if c not in missing]
    data = prepare_data(corpus_dirs(present, plan.data_dir, f"{plan.path}: corpora"), plan.subsample,
                        work_dir.resolve()) if present else PlanData(plan.data_dir or Path("."), {}, {})
    data = PlanData(data.data_dir, {**data.digests, **{c: "not-downloaded" for c in missing}},
                    {**data.splits, **{c: ("train", "devel", "test") for c in missing}}, missing)
    return with_cells(plan, data, work_dir, text_sources(plan, {}, missing))


def text_sources(plan: Plan, dirs: dict[str, Path], missing: tuple[str, ...] = ()) -> dict[str, tuple[str, str]]:
    """corpus -> (unsampled folder, digest) of the corpora the plan's text specifications read
    (their training splits): `from_corpora`, and the plan's corpora for `rest_of_train`."""
    wanted: list[str] = []
    for cache in plan.caches.values():
        text = cache.unlabelled
        if text is not None and not text.file:
            wanted += [c for c in (*text.from_corpora, *(plan.corpora if text.rest_of_train else ()))
                       if c not in wanted and c not in missing]
    found = {**dirs, **corpus_dirs([c for c in wanted if c not in dirs], plan.data_dir,
                                   f"{plan.path}: caches: unlabelled")} if wanted else dict(dirs)
    return {c: (str(found[c]), corpus_digest(found[c])) for c in wanted if c in found}


@dataclass
class PlanOutcome:
    plan_run_id: str
    results: list[CellResult]
    seconds: float
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)


def run_plan(resolved: ResolvedPlan, client, tracking_uri: str, experiment: str, executor: ExecutorOptions, *,
             attach_to: str | None = None,
             on_result: Callable[[CellResult, int, int], None] = lambda result, done, total: None,
             on_dashboard: Callable[[str], None] = lambda link: None) -> PlanOutcome:
    """Runs every cell not finished yet, under the plan's MLflow run (made once per plan and
    experiment). The Dask client is opened before the plan run: a cluster that does not answer
    leaves nothing behind; `on_dashboard` hears the dashboard's link, where one was asked for."""
    started = time.perf_counter()
    with dask_client(executor) as dask:
        if executor.dashboard and not executor.cluster:
            on_dashboard(dask.dashboard_link)
        plan_run = start_plan_run(client, experiment, resolved.plan.name, resolved.plan_id, resolved.plan.path,
                                  cells_summary(resolved.cells), attach_to=attach_to)
        context = CellContext(tracking_uri=tracking_uri, experiment=experiment, plan_run_id=plan_run.run_id,
                              data_dir=str(resolved.data.data_dir),
                              checkpoint_dir=str(resolved.work_dir / "checkpoints"),
                              threads=executor.cell_threads(), device=executor.device)
        done: list[CellResult] = []

        def heard(result: CellResult) -> None:
            done.append(result)
            on_result(result, len(done), len(resolved.cells))

        try:
            results = run_cells(dask, resolved.cells, context, heard)
        except BaseException:
            plan_run.finish("KILLED")
            raise
    counts = dict(Counter(r.status for r in results))
    plan_run.set_tags({f"cells_{status}": count for status, count in counts.items()})
    plan_run.log_metrics({"plan_seconds": time.perf_counter() - started, "cells": float(len(results)),
                          "cells_failed": float(sum(not r.ok for r in results))})
    plan_run.log_json([r.__dict__ for r in results], "plan/last_run.json")
    outcome = PlanOutcome(plan_run.run_id, results, time.perf_counter() - started, counts)
    plan_run.finish("FINISHED" if outcome.ok else "FAILED")
    return outcome


def plan_status(resolved: ResolvedPlan, client, experiment: str) -> dict[str, list[Cell]]:
    """done, running, failed and pending cells, from their runs in the experiment."""
    states: dict[str, list[Cell]] = {"done": [], "running": [], "failed": [], "pending": []}
    for cell_id, runs in runs_by_cell(client, experiment, resolved.cells).items():
        states[cell_state(runs)].append(resolved.cells[cell_id])
    return states


def count_by_kind(cells: list[Cell]) -> dict[str, int]:
    return {kind: sum(c.kind == kind for c in cells) for kind in ("text", "teacher", "cache", "study", "model")}

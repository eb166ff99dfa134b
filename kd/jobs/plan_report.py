"""`kd plan report`: every table of a plan through `kd compare`'s statistics (kd.statistics), from
the finished runs of the table's cells, written to the plan's work folder and logged to its plan run
under `reports/<table>`."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from kd.errors import KdError
from kd.jobs.driver import ResolvedPlan
from kd.jobs.plan_runs import runs_by_cell
from kd.statistics.compare import RunRecord, compare_runs
from kd.statistics.comparison_options import BayesianOptions, ComparisonOptions
from kd.statistics.comparison_report import FORMATS, render_markdown, write_outputs, write_results_json
from kd.tracking.runs import TrackedRun

MODEL_TAG = "plan_column"


def table_records(resolved: ResolvedPlan, runs: dict[str, list], table: str) -> list[RunRecord]:
    """One record per finished cell run of the table, named by the plan's model (column) name."""
    records, missing = [], []
    for model, cells in resolved.graph.columns(table).items():
        for cell in cells:
            finished = [r for r in runs.get(cell.cell_id, []) if r.info.status == "FINISHED"]
            if not finished:
                missing.append(cell.label)
                continue
            run = finished[0]
            records.append(RunRecord(run.info.run_id, {**run.data.tags, MODEL_TAG: model}, dict(run.data.params),
                                     dict(run.data.metrics), run.info.start_time or 0))
    if missing:
        raise KdError(f"table {table}: {len(missing)} cell(s) not finished (e.g. {missing[0]}); "
                      "run `kd plan run` with the same options first")
    return records


def report_plan(resolved: ResolvedPlan, client, experiment: str, plan_run_id: str, out_dir: Path,
                formats: tuple[str, ...] = FORMATS, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Each table's results.json contents, by table (with its validity notes under `validity`); the
    files go to `out_dir/<table>` and to the plan run. Fails (one line) before writing anything when a table's cells are not all finished."""
    runs = runs_by_cell(client, experiment, resolved.cells)
    records = {name: table_records(resolved, runs, name) for name in resolved.plan.tables}
    plan_run = TrackedRun(client, plan_run_id)
    results = {}
    for name, spec in resolved.plan.tables.items():
        comparison = compare_runs(records[name], ComparisonOptions(
            spec.metric, (f"tags.{MODEL_TAG}",), "tags.task", spec.posthoc, spec.alpha,
            bayesian=BayesianOptions(rope=spec.rope), seed=seed, versus=spec.versus))
        # Columns in the plan's order, not compare's alphabetical one (a merged "A = B" where A is).
        columns = list(comparison.table.mean.columns)
        order = [c for m in spec.models for c in columns if c.split(" = ")[0] == m]
        for frame in ("mean", "std", "var", "count"):
            setattr(comparison.table, frame, getattr(comparison.table, frame)[order])
        out = out_dir / name
        files = write_outputs(comparison, out, formats)
        results[name] = write_results_json(comparison, out, files, plan_run_id)
        results[name]["markdown"] = (f"## {spec.title or name}\n\n" if spec.title else f"## {name}\n\n") + \
            render_markdown(comparison)
        plan_run.log_artifact(out, f"reports/{name}")
        friedman = {f"{name}/friedman_p_value": comparison.result.p_value,
                    f"{name}/friedman_statistic": comparison.result.statistic}
        plan_run.log_metrics({key: value for key, value in friedman.items() if math.isfinite(value)})
    return results

"""Cells and plans in the tracking store. Every cell run carries the tags `cell` (its identity) and
`plan_run` (the plan run that started it); a plan run (`model_kind = plan`) holds the plan file, its
cells and its reports. What a cell's runs say decides what a plan run does with it: a finished run is
reused, an interrupted one with a checkpoint resumed, a live one waited for."""
from __future__ import annotations

import json
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kd.errors import KdError
from kd.tracking.runs import OWNER_HOST, OWNER_PID, TrackedRun, fail_if_abandoned, git_commit, process_alive

CELL_TAG, PLAN_RUN_TAG, PLAN_ID_TAG = "cell", "plan_run", "plan_id"
PAGE = 1000


def experiment_id(client, experiment: str) -> str | None:
    found = client.get_experiment_by_name(experiment)
    return found.experiment_id if found is not None else None


def search_all(client, experiment: str, filter_string: str) -> list:
    """Every active run of the experiment matching the filter, page by page."""
    found = experiment_id(client, experiment)
    if found is None:
        return []
    runs, token = [], None
    while True:
        page = client.search_runs([found], filter_string=filter_string, max_results=PAGE, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def cell_runs(client, experiment: str, cell_id: str) -> list:
    """The cell's runs, oldest first, any that was left RUNNING by a dead process on this host
    marked FAILED first."""
    runs = search_all(client, experiment, f"tags.{CELL_TAG} = '{cell_id}'")
    return sorted((fail_if_abandoned(client, run) for run in runs), key=run_order)


def runs_by_cell(client, experiment: str, cell_ids: Iterable[str]) -> dict[str, list]:
    """The runs of many cells with one search: cell id -> its runs, oldest first."""
    wanted = set(cell_ids)
    found: dict[str, list] = {cell: [] for cell in wanted}
    for run in search_all(client, experiment, f"tags.{CELL_TAG} LIKE '%'"):
        cell = run.data.tags.get(CELL_TAG)
        if cell in wanted:
            found[cell].append(run)
    return {cell: sorted(runs, key=run_order) for cell, runs in found.items()}


def run_order(run) -> tuple[int, str]:
    """Of two runs of one cell, the one started first wins (ties broken by run id, so every process
    that sees both picks the same)."""
    return run.info.start_time or 0, run.info.run_id


def owned_by_live_process(run) -> bool:
    """A RUNNING run whose owning process is alive on this host (not this process: one worker runs
    one cell at a time)."""
    import os

    tags = run.data.tags
    pid = tags.get(OWNER_PID, "")
    return (run.info.status == "RUNNING" and tags.get(OWNER_HOST) == socket.gethostname() and pid.isdigit()
            and int(pid) != os.getpid() and process_alive(int(pid)))


def resumable_checkpoint(run) -> Path | None:
    """The checkpoint an interrupted tagger run left, if it is still there."""
    path = run.data.tags.get("checkpoint")
    if run.info.status == "FINISHED" or not path or not Path(path).is_file():
        return None
    return Path(path)


def cell_state(runs: list) -> str:
    """done, running, failed or pending, from a cell's runs."""
    if any(r.info.status == "FINISHED" for r in runs):
        return "done"
    if any(r.info.status == "RUNNING" for r in runs):
        return "running"
    return "failed" if runs else "pending"


def find_plan_run(client, experiment: str, plan_id: str):
    """The plan run of this plan (its resolved cells and tables) in the experiment, if any."""
    runs = search_all(client, experiment, f"tags.model_kind = 'plan' and tags.{PLAN_ID_TAG} = '{plan_id}'")
    return min(runs, key=run_order) if runs else None


def start_plan_run(client, experiment: str, plan_name: str, plan_id: str, plan_path: Path, summary: dict[str, Any],
                   attach_to: str | None = None) -> TrackedRun:
    """The plan's run, reused when the same plan runs again in the experiment (so its cells keep
    one `plan_run`), else created with the plan file and the list of its cells."""
    existing = None if attach_to else find_plan_run(client, experiment, plan_id)
    if existing is not None:
        client.update_run(existing.info.run_id, status="RUNNING")
        return TrackedRun(client, existing.info.run_id)
    run = TrackedRun.start(client, experiment, plan_name, {"model_kind": "plan", "plan": plan_name,
                                                           PLAN_ID_TAG: plan_id, "git_commit": git_commit()},
                           attach_to=attach_to)
    run.log_params({"plan_file": str(plan_path), "cells": summary["cells"]})
    run.log_artifact(plan_path, "plan")
    run.log_json(summary, "plan/cells.json")
    return run


def plan_run_or_error(client, experiment: str, plan_id: str, plan_path: Path):
    run = find_plan_run(client, experiment, plan_id)
    if run is None:
        raise KdError(f"{plan_path}: no plan run for this plan (with these options) in experiment {experiment!r}; "
                      "run `kd plan run` first")
    return run


def cells_summary(cells: dict) -> dict[str, Any]:
    return {"cells": len(cells), "by_kind": {kind: sum(c.kind == kind for c in cells.values())
                                             for kind in ("text", "teacher", "cache", "study", "model")
                                             if kind not in ("text", "study") or any(c.kind == kind for c in cells.values())},
            "list": [{"cell": c.cell_id, "label": c.label, "depends_on": list(c.depends_on)} for c in cells.values()]}


def plan_identity(cells: dict, tables: dict) -> str:
    import hashlib

    text = json.dumps({"cells": sorted(cells), "tables": {n: list(t.models) for n, t in tables.items()}}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]

"""`kd plan`: what orchestration costs per cell, and the scaled published tables end to end.

Overhead (the default): runs a plan (by default experiments/information2023-cpu.yaml, cut down with
--corpora/--seeds/--epochs/--max-train-sentences) on ONE local worker with one thread, so that cells
run one after another and the plan's wall time is the cells' own work plus everything around it.
Every cell reports its task's wall time in the worker and, inside it, the library call that trains or
caches (the cell's own command, as `kd train`/`kd distill`/`kd cache-logits` make it). Per cell:

* in-worker overhead: task wall time - library time (looking up the cell's runs, claiming it, tags);
* the gap between one task's end and the next one's start (Dask handing results on);
* their sum as a share of the mean library time per cell (target: under 2 %).

Once per plan, not per cell, and reported apart: the local cluster's start (measured alone), the first
cell's imports in a fresh worker, and the plan run's bookkeeping (everything outside the cells).
Then the same plan again: every cell is reused, which measures the skip path.

    python bench/plan.py [--plan experiments/information2023-cpu.yaml] [--corpora NCBI-disease,BC5CDR]
        [--seeds 1] [--epochs 2] [--max-train-sentences 300] [--only table1] [--store DIR] [--json-out F]
    python bench/plan.py --full [--workers 2] [--store DIR]     # the whole plan, reports printed
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", default=str(REPO / "experiments" / "information2023-cpu.yaml"))
    parser.add_argument("--corpora", default="NCBI-disease,BC5CDR")
    parser.add_argument("--seeds", default="1")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-train-sentences", type=int, default=300)
    parser.add_argument("--only", default="table1")
    parser.add_argument("--full", action="store_true", help="The plan as written, every table, reported.")
    parser.add_argument("--workers", type=int, default=2, help="With --full: local worker processes.")
    parser.add_argument("--store", default="bench-plan", help="Folder of the MLflow store and the plan's work.")
    parser.add_argument("--json-out", default=None)
    return parser.parse_args()


def worker_startup_seconds() -> float:
    """Starting and stopping a one-worker local cluster, as `kd plan run` does once per plan."""
    from kd.jobs.executor import ExecutorOptions, dask_client

    started = time.perf_counter()
    with dask_client(ExecutorOptions(workers=1, threads=1)) as client:
        client.submit(os.getpid, pure=False).result()  # the worker is up and answers
    return time.perf_counter() - started


def run_once(resolved, client, uri: str, experiment: str, workers: int, threads: int) -> dict:
    from kd.jobs.driver import run_plan
    from kd.jobs.executor import ExecutorOptions

    outcome = run_plan(resolved, client, uri, experiment, ExecutorOptions(workers=workers, threads=threads,
                                                                                device="cpu"),
                       on_result=lambda r, done, total: print(
                           f"[{done}/{total}] {r.status:8} {r.label} {r.seconds:.2f} s "
                           f"(library {r.library_seconds:.2f} s)", file=sys.stderr))
    if not outcome.ok:
        failed = next(r for r in outcome.results if not r.ok)
        raise SystemExit(f"{failed.label}: {failed.message}")
    return {"wall_s": outcome.seconds, "results": outcome.results, "plan_run_id": outcome.plan_run_id}


def overhead(first: dict, startup: float) -> dict:
    """Per cell: the worker's time around the library call (the first cell of a fresh worker also
    imports torch and MLflow: reported apart) and the gap between one task's end and the next one's
    start on the single worker (Dask passing the result on and starting the next task)."""
    results = sorted(first["results"], key=lambda r: r.started_at)
    library = [r.library_seconds for r in results]
    in_worker = [r.seconds - r.library_seconds for r in results]
    gaps = [b.started_at - a.ended_at for a, b in zip(results, results[1:])]
    steady = statistics.mean(in_worker[1:]) + statistics.mean(gaps)
    mean_library = statistics.mean(library)
    return {"cells": len(results), "plan_wall_s": first["wall_s"], "cluster_startup_s": startup,
            "first_cell_in_worker_overhead_s": in_worker[0], "mean_library_s": mean_library,
            "mean_in_worker_overhead_s": statistics.mean(in_worker[1:]), "mean_gap_between_cells_s": statistics.mean(gaps),
            "max_gap_between_cells_s": max(gaps), "overhead_per_cell_s": steady,
            "overhead_share": steady / mean_library,
            "outside_cells_s": first["wall_s"] - sum(r.seconds for r in results) - sum(gaps)}


def main() -> None:
    args = parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    store = Path(args.store).resolve()
    store.mkdir(parents=True, exist_ok=True)
    from kd.jobs.driver import resolve
    from kd.jobs.plan import load_plan, with_overrides
    from kd.tracking.backend import open_client

    uri = f"sqlite:///{store / 'mlflow.db'}"
    client = open_client(uri)
    plan = load_plan(args.plan)
    if not args.full:
        plan = with_overrides(plan, only=args.only, corpora=args.corpora.split(","),
                              seeds=[int(s) for s in args.seeds.split(",")], epochs=args.epochs,
                              max_train_sentences=args.max_train_sentences)
    resolved = resolve(plan, store / "work")
    experiment = f"bench-plan-{int(time.time())}"
    if args.full:
        first = run_once(resolved, client, uri, experiment, args.workers,
                         max(1, (os.cpu_count() or 1) // args.workers))
        from kd.jobs.plan_report import report_plan

        reports = report_plan(resolved, client, experiment, first["plan_run_id"], store / "reports")
        for table in reports.values():
            print(table["markdown"])
        summary = {"plan": plan.name, "cells": len(first["results"]), "wall_s": first["wall_s"],
                   "workers": args.workers, "friedman_p": {n: t["friedman_p_value"] for n, t in reports.items()},
                   "average": {n: {m: sum(t["cells"][c][m]["mean"] for c in t["corpora"]) / len(t["corpora"])
                                   for m in t["models"]} for n, t in reports.items()}}
    else:
        startup = worker_startup_seconds()
        first = run_once(resolved, client, uri, experiment, 1, 1)
        second = run_once(resolved, client, uri, experiment, 1, 1)
        summary = {"plan": plan.name, **overhead(first, startup), "rerun_wall_s": second["wall_s"],
                   "rerun_statuses": sorted({r.status for r in second["results"]})}
    print(json.dumps(summary, indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

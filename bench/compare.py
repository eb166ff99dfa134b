"""Benchmark for `kd compare`: an experiment of N runs (default 5,000) in a local sqlite store,
then the wall time of `kd compare` end to end (process start, fetching every run page by page,
statistics, tables, figures and logging the comparison run).

Usage: python bench/compare.py [--runs 5000] [--store DIR] [--repeat 3] [--bayesian 0.5]

The runs look like kd's: tags task, model_kind, output, loss, ensemble, seed; params alpha, beta;
metrics test_precision, test_recall, test_f1 and a train_loss history of 10 epochs. They are spread
over 10 corpora, 5 seeds and as many models as it takes (a last, partial model is dropped with
--drop-incomplete). `kd compare` runs with its defaults (Wilcoxon-Holm, Bayesian signed-rank tests
with a 0.5-point ROPE: 99 pairs here, each model against the best ranked, one plot each);
`--bayesian 0` times it without the Bayesian tests. Building the store is slow (MLflow writes
run by run) and is timed separately; `--store` keeps it for later runs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# 10 corpora x 5 seeds: 5,000 runs are exactly 100 complete models.
CORPORA = ["AnatEM", "BC2GM", "BC5CDR", "BioNLP09", "BioNLP11EPI", "BioNLP11ID", "BioNLP13GE", "BioNLP13PC",
           "CRAFT", "NCBI-disease"]
SEEDS = 5


def build_store(uri: str, experiment: str, runs: int) -> float:
    import random

    from mlflow.entities import Metric, Param

    from kd.tracking.backend import open_client

    client = open_client(uri)
    experiment_id = client.create_experiment(experiment)
    rng = random.Random(0)
    models = max(3, -(-runs // (len(CORPORA) * SEEDS)))
    started = time.perf_counter()
    made = 0
    for model in range(models):
        alpha = round(model / max(models - 1, 1), 3)
        for corpus in CORPORA:
            for seed in range(SEEDS):
                if made == runs:
                    return time.perf_counter() - started
                run = client.create_run(experiment_id, tags={
                    "task": corpus, "model_kind": "student", "output": "softmax", "loss": "logits",
                    "ensemble": "single", "seed": str(seed)})
                now = int(time.time() * 1000)
                f1 = 0.8 + 0.05 * alpha + rng.gauss(0, 0.01)
                client.log_batch(run.info.run_id,
                                 metrics=[Metric("test_f1", f1, now, 10), Metric("test_precision", f1, now, 10),
                                          Metric("test_recall", f1, now, 10)]
                                 + [Metric("train_loss", 1.0 / (e + 1), now, e + 1) for e in range(10)],
                                 params=[Param("alpha", str(alpha)), Param("beta", str(round(1 - alpha, 3)))])
                client.set_terminated(run.info.run_id)
                made += 1
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5000)
    parser.add_argument("--store", type=Path, default=None, help="Keep (or reuse) the store in this folder.")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--bayesian", type=float, default=0.5, help="kd compare --bayesian ROPE (0: off).")
    args = parser.parse_args()

    folder = args.store or Path(tempfile.mkdtemp(prefix="kd-bench-compare-"))
    folder.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    experiment = f"bench-{args.runs}-{len(CORPORA)}"
    build_seconds = None
    if not (folder / f"{experiment}.built").exists():
        build_seconds = build_store(uri, experiment, args.runs)
        (folder / f"{experiment}.built").write_text(str(build_seconds))
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    times = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "kd", "compare", "--experiment", experiment, "--out",
                                 str(folder / "out"), "--json", "--drop-incomplete",
                                 "--bayesian", str(args.bayesian)], env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - started)
        if result.returncode != 0:
            sys.exit(f"kd compare failed:\n{result.stderr}")
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    report = {"runs": args.runs, "models": len(summary["models"]), "corpora": len(summary["corpora"]),
              "build_store_s": build_seconds, "compare_s": times, "compare_best_s": min(times),
              "target_s": 15.0, "cpu_count": os.cpu_count(), "bayesian_rope": args.bayesian}
    print(f"{args.runs} runs, {report['models']} models x {report['corpora']} corpora x {SEEDS} seeds")
    if build_seconds is not None:
        print(f"building the store: {build_seconds:.1f} s")
    print("kd compare end to end: " + ", ".join(f"{t:.2f} s" for t in times) + " (target < 15 s)")
    print(json.dumps(report))


if __name__ == "__main__":
    main()

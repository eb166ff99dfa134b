"""Where a whole `kd train` process goes (issue 28): one epoch of the default CRF tagger on a corpus's
train split, test tagged, as a fresh process at kd's defaults, against the hand-written yardstick
(`../shared/bench/yardstick_tagger.py`, its defaults) run the same way.

Each kd process runs the CLI itself (`kd train ...`) with timers wrapped around the functions that
make its stages (reading the corpora, opening the tracking store, assembling the model, the epoch,
evaluation, checkpoints, logging the model, ...); the wrappers are installed before the command
starts, which imports the modules they wrap (torch and kd's own) ahead of it: that is the `imports
to wrap the stages` line, time the unwrapped process spends in those same imports later. The
process's wall time is taken from outside. `outside the epoch` is wall time minus the epoch.

Every process runs in a fresh folder (a new sqlite store, as a user's first run) and then again
in the same folder (the store exists). `--code DIR` measures another checkout (e.g. the code before a
change: `git worktree add /tmp/kd-before COMMIT`); checkouts and the yardstick are interleaved, run by
run, so they meet the same moments of the machine.

    python bench/process_stages.py --data-dir ../shared/datasets --code /tmp/kd-before --code . --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

YARDSTICK = Path(__file__).resolve().parents[2] / "shared" / "bench" / "yardstick_tagger.py"
# (module, attribute, stage): the functions whose time makes each stage; "  " marks a part of the stage above.
STAGES = [
    ("kd.training.assemble", "load_job_tasks", "read the corpora"),
    ("kd.cli.options", "tracking_client", "open the tracking store"),
    ("kd.training.assemble", "assemble", "assemble: vocabularies, model, optimizer, encoding"),
    ("kd.training.tagger_job", "start_run", "start the run (tags, params)"),
    ("kd.training.loop", "train_epoch", "the training epoch"),
    ("kd.training.evaluate", "Evaluator.run", "evaluation (devel each epoch, final splits)"),
    ("kd.training.evaluate", "entity_scores", "  of which entity scoring"),
    ("kd.training.loop", "TrainingState.save", "checkpoints"),
    ("kd.training.tagger_job", "log_final_artifacts", "log the model, predictions, reports"),
    ("kd.tracking.logged_models", "log_tagger_model", "  of which the MLflow model"),
]
CHILD = r"""
import collections, functools, importlib, json, sys, time
started = time.perf_counter()
stages, seconds = json.loads(sys.argv[1]), collections.defaultdict(float)

def timed(function, stage):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        begin = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            seconds[stage] += time.perf_counter() - begin
    return wrapper

for module_name, attribute, stage in stages:
    owner = importlib.import_module(module_name)
    *path, name = attribute.split(".")
    for part in path:
        owner = getattr(owner, part)
    original = getattr(owner, name, None)
    if original is None:
        continue
    setattr(owner, name, timed(original, stage))
    for module in list(sys.modules.values()):  # names imported with `from module import name`
        if getattr(module, "__name__", "").startswith("kd.") and getattr(module, name, None) is original:
            setattr(module, name, getattr(owner, name))
seconds["imports to wrap the stages"] = time.perf_counter() - started

def write_stages():  # at exit: kd's main() may end the process itself (kd.cli.process_exit)
    with open(OUT, "w") as handle:
        json.dump(seconds, handle)

import atexit
atexit.register(write_stages)
from kd.cli.main import main
sys.argv = ["kd", *sys.argv[3:]]
main()
"""


def kd_process(code: Path, workdir: Path, corpus: Path, output: str) -> dict[str, float]:
    """One `kd train` process with its stages timed; its figures, wall time included."""
    out = workdir / "stages.json"
    args = ["train", "--task", str(corpus), "--train-splits", "train", "--eval-split", "test", "--epochs", "1",
            "--output", output]
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("OMP_", "MLFLOW_", "KD_", "GOMP_"))} | {"PYTHONPATH": str(code)}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", CHILD.replace("OUT", repr(str(out))), json.dumps(STAGES), "-", *args],
                            cwd=workdir, env=env, capture_output=True, text=True, timeout=1800)
    if result.returncode:
        raise SystemExit(f"{code}: kd train failed ({result.returncode}): {result.stderr[-2000:]}")
    figures = {"wall": time.perf_counter() - started, **json.loads(out.read_text())}
    figures["outside the epoch"] = figures["wall"] - figures.get("the training epoch", 0.0)
    return figures


def yardstick_process(corpus: Path, output: str) -> dict[str, float]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, str(YARDSTICK), str(corpus), "--crf", str(int(output == "crf"))],
                            check=True, capture_output=True, text=True, timeout=1800)
    reported = json.loads(result.stdout.strip().splitlines()[-1])
    return {"wall": time.perf_counter() - started, "the training epoch": reported["train_s"],
            "outside the epoch": time.perf_counter() - started - reported["train_s"], "test_f1": reported["test_f1"]}


def print_table(figures: dict[str, list[dict[str, float]]]) -> None:
    names = list(figures)
    rows = ["wall", "outside the epoch", "imports to wrap the stages", *dict.fromkeys(s for _, _, s in STAGES)]
    print("| stage (median s) | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for row in rows:
        cells = [statistics.median(f[row] for f in runs) if all(row in f for f in runs) else None
                 for runs in figures.values()]
        print(f"| {row} | " + " | ".join("-" if c is None else f"{c:.2f}" for c in cells) + " |")
    for name, runs in figures.items():
        print(f"{name}: wall per run " + ", ".join(f"{f['wall']:.1f}" for f in runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--corpus", default="NCBI-disease")
    parser.add_argument("--output", choices=["crf", "softmax"], default="crf")
    parser.add_argument("--code", action="append", default=None, help="Checkout to measure (repeatable; default .).")
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()
    corpus = Path(options.data_dir).resolve() / options.corpus
    codes = [Path(c).resolve() for c in (options.code or ["."])]
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; CPUs: {os.cpu_count()}")
    figures: dict[str, list[dict[str, float]]] = {"yardstick": []}
    for _ in range(options.repeats):
        figures["yardstick"].append(yardstick_process(corpus, options.output))
        for code in codes:
            with tempfile.TemporaryDirectory() as tmp:
                for store in ("new store", "existing store"):
                    figures.setdefault(f"{code.name} ({store})", []).append(
                        kd_process(code, Path(tmp), corpus, options.output))
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print_table(figures)
    print("yardstick test F1: " + ", ".join(f"{f['test_f1']:.4f}" for f in figures["yardstick"]))


if __name__ == "__main__":
    main()

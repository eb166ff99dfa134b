"""Benchmark for `kd tune`: what pruning saves.

In a temporary MLflow store and Optuna journal: truncate the teacher corpora (NCBI-disease and
BC5CDR by default) to --max-sentences train and --devel-sentences devel (and test) sentences,
train a multi-task teacher briefly, cache its logits, then run the same study budget twice on
--corpus with the same sampler and seed: once with `--pruner none`, once with `--pruner PRUNER` (default median)
(search space: the `logits` loss, alpha in [0, 1], fixed epochs and student sizes), for each seed
of --seeds. Reports per
study the wall time, trials per hour, the trial-epochs actually trained (the sum over trials of
the devel F1 points each reported, from Optuna's intermediate values, cross-checked against the
MLflow trial runs) and the best devel F1; then the reduction of trial-epochs (target >= 40%) and
the best-F1 gap (target within 0.3 points), per seed and averaged over the seeds.

Usage: python bench/tune.py [--data-dir ../shared/datasets] [--corpus NCBI-disease]
       [--teacher-corpora NCBI-disease,BC5CDR] [--max-sentences 1500] [--devel-sentences 500]
       [--trials 12] [--epochs 6] [--teacher-epochs 2] [--seeds 1,2,3] [--sampler tpe|random]
       [--threads N] [--keep DIR] [--json-out FILE]

Prints a table and, last, one JSON line.
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

REPO = Path(__file__).resolve().parents[1]
# The student: smaller than kd's defaults (and than the teacher) so a study of a dozen trials fits
# in minutes on a CPU; the same for both studies.
STUDENT = {"loss": "logits", "output": "softmax", "word_dim": 50, "char_dim": 16, "char_hidden": 16,
           "shared_hidden": 64, "task_hidden": 64, "hidden_dim": 64, "dropout": 0.3, "batch_size": 32,
           "learning_rate": 0.01}
TEACHER = ["--word-dim", "50", "--char-dim", "16", "--char-hidden", "16", "--shared-hidden", "100",
           "--task-hidden", "100", "--hidden-dim", "100", "--dropout", "0.3", "--batch-size", "32",
           "--learning-rate", "0.01"]


def sentence_blocks(path: Path) -> list[str]:
    """The sentences of a CoNLL file as text blocks (document markers left out)."""
    blocks = [b.strip("\n") for b in path.read_text(encoding="utf-8").split("\n\n")]
    return [b for b in blocks if b.strip() and not b.lstrip().startswith("-DOCSTART-")]


def truncate_corpus(source: Path, target: Path, sizes: dict[str, int]) -> dict[str, int]:
    target.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, limit in sizes.items():
        candidates = [source / f"{split}{suffix}" for suffix in (".tsv", ".conll", ".txt", ".iob2")]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise SystemExit(f"{source}: no {split} split")
        blocks = sentence_blocks(found)[:limit]
        (target / f"{split}.tsv").write_text("\n\n".join(blocks) + "\n\n", encoding="utf-8")
        counts[split] = len(blocks)
    return counts


def kd(args: list[str], env: dict[str, str], cwd: Path) -> tuple[dict, float]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "kd", *map(str, args), "--json"], env=env, cwd=cwd,
                            capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.stderr.write(result.stderr[-4000:])
        raise SystemExit(f"kd {args[0]} failed ({result.returncode})")
    for line in result.stderr.splitlines():
        if line.startswith("trial ") or line.startswith("re-queued"):
            print(f"    {line}", flush=True)
    return json.loads(result.stdout.strip().splitlines()[-1]), seconds


def study_numbers(journal: Path, study_name: str, client, parent_run_id: str, epochs: int) -> dict:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=study_name, storage=JournalStorage(JournalFileBackend(str(journal))))
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    trial_epochs = sum(len(t.intermediate_values) for t in finished)
    # Cross-check with MLflow: the distinct epochs with a devel F1 point in each trial run.
    runs = client.search_runs([client.get_run(parent_run_id).info.experiment_id], max_results=1000,
                              filter_string=f"tags.study = '{study_name}' and tags.tuning = 'trial'")
    mlflow_epochs = sum(len({m.step for m in client.get_metric_history(r.info.run_id, "devel_f1")}) for r in runs)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    best = max(complete, key=lambda t: t.value) if complete else None
    return {
        "trials": len(finished), "complete": len(complete),
        "pruned": sum(1 for t in trials if t.state.name == "PRUNED"),
        "trial_epochs": trial_epochs, "mlflow_trial_epochs": mlflow_epochs, "max_trial_epochs": len(finished) * epochs,
        "best_devel_f1": best.value if best else None, "best_alpha": best.params["alpha"] if best else None,
        "pruned_at_epoch": sorted(len(t.intermediate_values) for t in trials if t.state.name == "PRUNED"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "datasets"))
    parser.add_argument("--corpus", default="NCBI-disease", help="The corpus tuned (one of the teacher's).")
    parser.add_argument("--teacher-corpora", default="NCBI-disease,BC5CDR")
    parser.add_argument("--max-sentences", type=int, default=1500, help="Train sentences kept per corpus.")
    parser.add_argument("--devel-sentences", type=int, default=500, help="Devel (and test) sentences kept per corpus.")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=6, help="Epochs of every trial (fixed in the space).")
    parser.add_argument("--teacher-epochs", type=int, default=2)
    parser.add_argument("--pruner", default="median", choices=["median", "percentile", "hyperband"],
                        help="The pruner compared with none (default: kd tune's).")
    parser.add_argument("--seeds", default="1", help="Sampler seeds, comma-separated: one pair of studies (none, "
                                                      "pruner) per seed, the same seed for both of a pair.")
    parser.add_argument("--sampler", default="tpe", choices=["tpe", "random"],
                        help="random draws the same parameters in both studies of a pair, whatever was pruned; "
                             "tpe's draws after its start-up trials depend on what was pruned.")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of every kd process.")
    parser.add_argument("--keep", default=None, help="Work in this folder and keep it (default: a temporary one).")
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()

    corpora = [c.strip() for c in args.teacher_corpora.split(",") if c.strip()]
    if args.corpus not in corpora:
        raise SystemExit(f"--corpus {args.corpus} must be one of --teacher-corpora {args.teacher_corpora}")
    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="kd-bench-tune-"))
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = workdir / "corpora"
    sizes = {}
    for corpus in corpora:
        sizes[corpus] = truncate_corpus(Path(args.data_dir) / corpus, data_dir / corpus, {
            "train": args.max_sentences, "devel": args.devel_sentences, "test": args.devel_sentences})
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    env.pop("MLFLOW_RUN_ID", None)
    threads = ["--threads", str(args.threads)] if args.threads else []
    print(f"work folder {workdir}; corpora {json.dumps(sizes)}", flush=True)

    teacher, teacher_seconds = kd(["train-teacher", "--tasks", ",".join(corpora), "--data-dir", data_dir,
                                   "--epochs", args.teacher_epochs, *TEACHER, *threads], env, workdir)
    print(f"teacher {teacher['run_id']}: test F1 {teacher['test_f1']:.4f} ({teacher_seconds:.0f} s)", flush=True)
    cache, cache_seconds = kd(["cache-logits", "--teacher", teacher["run_id"], "--data-dir", data_dir, *threads],
                              env, workdir)
    print(f"cache {cache['run_id']} ({cache_seconds:.0f} s)", flush=True)

    space = workdir / "space.yaml"
    fixed = ", ".join(f"{k}: {v}" for k, v in {**STUDENT, "epochs": args.epochs}.items())
    space.write_text(f"fixed: {{{fixed}}}\nparams:\n  alpha: {{type: float, low: 0.0, high: 1.0}}\n")
    journal = workdir / "kd-optuna.log"

    from kd.tracking.backend import open_client

    client = open_client(uri)
    seeds = [int(seed) for seed in args.seeds.split(",")]
    pairs = []
    for seed in seeds:
        studies = {}
        for pruner in ("none", args.pruner):
            name = f"bench-{args.sampler}-{seed}-{pruner}"
            print(f"study {name}: {args.trials} trials of {args.epochs} epochs", flush=True)
            result, seconds = kd(["tune", "--task", args.corpus, "--cache", cache["run_id"], "--space", space,
                                  "--data-dir", data_dir, "--n-trials", args.trials, "--pruner", pruner,
                                  "--sampler", args.sampler, "--seed", seed, "--study", name, "--storage", journal,
                                  "--experiment", "bench-tune", *threads], env, workdir)
            numbers = study_numbers(journal, name, client, result["parent_run_id"], args.epochs)
            numbers.update({"wall_seconds": seconds, "trials_per_hour": numbers["trials"] / seconds * 3600,
                            "trial_epochs_per_hour": numbers["trial_epochs"] / seconds * 3600})
            studies[pruner] = numbers
        none, pruned = studies["none"], studies[args.pruner]
        pairs.append({"seed": seed, "studies": studies,
                      "trial_epoch_reduction": 1 - pruned["trial_epochs"] / none["trial_epochs"],
                      "best_f1_gap_points": 100 * (none["best_devel_f1"] - pruned["best_devel_f1"])})

    print()
    print("| seed | pruner | trials | complete | pruned | trial-epochs | wall (s) | trials/hour | best devel F1 "
          "| best alpha |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for pair in pairs:
        for pruner, n in pair["studies"].items():
            print(f"| {pair['seed']} | {pruner} | {n['trials']} | {n['complete']} | {n['pruned']} | "
                  f"{n['trial_epochs']} / {n['max_trial_epochs']} | {n['wall_seconds']:.0f} | "
                  f"{n['trials_per_hour']:.1f} | {100 * n['best_devel_f1']:.2f} | {n['best_alpha']:.3f} |")
    reduction = statistics.mean(p["trial_epoch_reduction"] for p in pairs)
    gap = statistics.mean(p["best_f1_gap_points"] for p in pairs)
    print()
    for pair in pairs:
        print(f"seed {pair['seed']}: trial-epochs saved {100 * pair['trial_epoch_reduction']:.1f}%, "
              f"best devel F1 gap (none - {args.pruner}) {pair['best_f1_gap_points']:+.2f} points")
    print(f"mean over {len(pairs)} seed(s): trial-epochs saved by {args.pruner} pruning {100 * reduction:.1f}% "
          f"(target >= 40%): {'met' if reduction >= 0.4 else 'NOT met'}; best devel F1 gap {gap:+.2f} points "
          f"(target within 0.3): {'met' if gap <= 0.3 else 'NOT met'}")
    summary = {
        "corpus": args.corpus, "teacher_corpora": corpora, "sentences": sizes, "trials": args.trials,
        "epochs": args.epochs, "teacher_epochs": args.teacher_epochs, "pruner": args.pruner, "sampler": args.sampler, "seeds": seeds,
        "threads": args.threads, "teacher_test_f1": teacher["test_f1"], "teacher_seconds": teacher_seconds,
        "cache_seconds": cache_seconds, "pairs": pairs, "mean_trial_epoch_reduction": reduction,
        "mean_best_f1_gap_points": gap, "reduction_target_met": reduction >= 0.4, "gap_target_met": gap <= 0.3,
    }
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    main()

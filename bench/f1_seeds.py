"""Test F1 of kd's default single-task tagger after a few epochs, over several seeds.

One epoch or one seed says little about F1 (seeds alone move NCBI-disease F1 by 3-4 points after
3 epochs), so this trains a default-size tagger with `kd.training.loop.train` as `kd train` does
(batch 32, Adam lr 1e-3, clipping at 5, on train) for each seed, tags test with `predict_tags`,
and prints strict IOB2 F1 (kd's metric) and seqeval's default (conlleval) F1, the metric the
yardstick (../shared/bench/yardstick_tagger.py) prints, then the means. With --yardstick it also
runs the yardstick for each seed: the script is run unmodified, its `torch.manual_seed(1)` and
`random.seed(1)` shifted to seed N (seed 1 is the yardstick exactly as shipped).

    python bench/f1_seeds.py [--data-dir ../shared/datasets] [--corpus NCBI-disease] [--output softmax]
        [--epochs 3] [--seeds 1,2,3,4,5] [--threads 2] [--yardstick [PATH]] [--skip-kd]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from seqeval.metrics import f1_score

from kd.data.batching import EncodedDataset
from kd.data.vocab import build_vocabularies
from kd.models.predict import predict_tags
from kd.training.evaluate import entity_scores
from kd.models.tagger import TaggerConfig
from kd.training.job_definition import build_tagger, load_task
from kd.training.loop import Trainable, TrainingOptions, train
from kd.training.schedule import alternating_plan, supervised_loss, task_optimizers


# Runs the yardstick with its fixed seeds shifted by (seed - 1), without copying or editing it.
SHIFTED_SEED_RUNNER = """
import random, runpy, sys, torch
shift = int(sys.argv[1]) - 1
script = sys.argv[2]
sys.argv = [script] + sys.argv[3:]
manual_seed, random_seed = torch.manual_seed, random.seed
torch.manual_seed = lambda s: manual_seed(s + shift)
random.seed = lambda s=None, *a, **k: random_seed(None if s is None else s + shift, *a, **k)
runpy.run_path(script, run_name="__main__")
"""


def yardstick_f1(script: Path, corpus_dir: Path, output: str, epochs: int, threads: int, seed: int) -> float:
    command = [sys.executable, "-c", SHIFTED_SEED_RUNNER, str(seed), str(script), str(corpus_dir),
               "--crf", str(int(output == "crf")), "--epochs", str(epochs), "--threads", str(threads)]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if completed.returncode != 0 or not lines:
        raise SystemExit(f"yardstick failed (exit {completed.returncode}): {completed.stderr.strip()[-500:]}")
    return 100 * float(json.loads(lines[-1])["test_f1"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets")
    parser.add_argument("--corpus", default="NCBI-disease")
    parser.add_argument("--output", default="softmax", choices=["softmax", "crf"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", default="1,2,3,4,5")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--yardstick", nargs="?", type=Path, default=None,
                        const=Path(__file__).resolve().parents[2] / "shared" / "bench" / "yardstick_tagger.py")
    parser.add_argument("--skip-kd", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = load_task(args.corpus, args.data_dir, ["train", "test"])
    vocabularies = build_vocabularies({data.name: data.splits["train"]})
    train_set = EncodedDataset(data.splits["train"], vocabularies, data.name)
    test_set = EncodedDataset(data.splits["test"], vocabularies, data.name)
    gold = [list(s.tags) for s in test_set.sentences]
    device = torch.device("cpu")
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        row: dict = {"seed": seed}
        if not args.skip_kd:
            model, _ = build_tagger(TaggerConfig(output=args.output), vocabularies, seed)
            started = time.perf_counter()
            train(Trainable(model, task_optimizers(model, 1e-3), alternating_plan({data.name: train_set}, 32, "uniform"),
                            supervised_loss(model)), TrainingOptions(epochs=args.epochs, seed=seed), device)
            predicted = predict_tags(model, test_set, vocabularies, data.name, device)
            row.update({"f1_strict": 100 * entity_scores(gold, predicted).f1,
                        "f1_conlleval": 100 * float(f1_score(gold, predicted)),
                        "seconds": time.perf_counter() - started})
        if args.yardstick:
            row["yardstick_f1_conlleval"] = yardstick_f1(args.yardstick, data.directory, args.output, args.epochs,
                                                         args.threads, seed)
        rows.append(row)
        print(f"seed {seed}: " + "  ".join(f"{k} {v:.2f}" for k, v in row.items() if k != "seed"), flush=True)
    means = {k: statistics.mean(r[k] for r in rows) for k in rows[0] if k not in ("seed", "seconds")}
    print(f"mean over {len(rows)} seeds: " + "  ".join(f"{k} {v:.2f}" for k, v in means.items()))
    print(json.dumps({"corpus": data.name, "output": args.output, "epochs": args.epochs, "rows": rows, "means": means}))


if __name__ == "__main__":
    main()

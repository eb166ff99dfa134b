"""Test F1 of kd's default single-task tagger after a few epochs, over several seeds.

One epoch or one seed says little about F1 (seeds alone move NCBI-disease F1 by 3-4 points after
3 epochs), so this trains a default-size tagger with `kd.training.loop.train` as `kd train` does
(batch 32, Adam lr 1e-3, clipping at 5, on train) for each seed, tags test with `predict_tags`,
and prints strict IOB2 F1 (kd's metric) and seqeval's default (conlleval) F1, the metric the
yardstick (../shared/bench/yardstick_tagger.py, seed fixed at 1) prints, then the means.

    python bench/f1_seeds.py [--data-dir ../shared/datasets] [--corpus NCBI-disease] [--output softmax]
        [--epochs 3] [--seeds 1,2,3,4,5] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from seqeval.metrics import f1_score

from kd.data.batching import EncodedDataset
from kd.data.vocab import build_vocabularies
from kd.training.evaluate import entity_scores, predict_tags
from kd.training.jobs import ModelOptions, build_tagger, load_task
from kd.training.loop import TrainingOptions, train
from kd.training.tagger_job import alternating_plan, supervised_loss, task_optimizers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets")
    parser.add_argument("--corpus", default="NCBI-disease")
    parser.add_argument("--output", default="softmax", choices=["softmax", "crf"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", default="1,2,3,4,5")
    parser.add_argument("--threads", type=int, default=2)
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
        model, _ = build_tagger(ModelOptions(output=args.output), vocabularies, seed)
        started = time.perf_counter()
        train(model, task_optimizers(model, 1e-3), alternating_plan({data.name: train_set}, 32, "uniform"),
              supervised_loss(model), TrainingOptions(epochs=args.epochs, seed=seed), device)
        predicted = predict_tags(model, test_set, vocabularies, data.name, device)
        rows.append({"seed": seed, "f1_strict": 100 * entity_scores(gold, predicted).f1,
                     "f1_conlleval": 100 * float(f1_score(gold, predicted)), "seconds": time.perf_counter() - started})
        print(f"seed {seed}: F1 strict {rows[-1]['f1_strict']:.2f}  conlleval {rows[-1]['f1_conlleval']:.2f}  "
              f"({rows[-1]['seconds']:.0f} s)", flush=True)
    means = {k: statistics.mean(r[k] for r in rows) for k in ("f1_strict", "f1_conlleval")}
    print(f"mean over {len(rows)} seeds: F1 strict {means['f1_strict']:.2f}  conlleval {means['f1_conlleval']:.2f}")
    print(json.dumps({"corpus": data.name, "output": args.output, "epochs": args.epochs, "rows": rows, "means": means}))


if __name__ == "__main__":
    main()

"""Prediction speed of `predict_tags` by batch token budget and precision.

On the test split of one corpus (default NCBI-disease from ../shared/datasets), a default-size
tagger with its initial weights (speed does not depend on the weights) tags the whole split
--calls times per setting after one warm-up call; the median is reported, with the share of
padded positions in the batches. `kd` uses PREDICT_BATCH_TOKENS (kd/training/evaluate.py).

    python bench/predict_batches.py [--data-dir ../shared/datasets] [--corpus NCBI-disease]
        [--budgets 512,1024,2048,4096,8192] [--precision fp32,bf16] [--output crf] [--threads 2] [--calls 5]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from kd.data.batching import EncodedDataset, token_budget_batches
from kd.data.vocab import build_vocabularies
from kd.models.predict import PREDICT_BATCH_TOKENS, predict_tags
from kd.models.tagger import TaggerConfig
from kd.training.job_definition import build_tagger, load_task


def padding_share(lengths, batches) -> float:
    padded = sum(len(b) * int(lengths[b].max()) for b in batches)
    return 1 - int(lengths.sum()) / padded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets")
    parser.add_argument("--corpus", default="NCBI-disease")
    parser.add_argument("--budgets", default="512,1024,2048,4096,8192")
    parser.add_argument("--precision", default="fp32,bf16")
    parser.add_argument("--output", default="crf", choices=["softmax", "crf"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = load_task(args.corpus, args.data_dir, ["train", "test"])
    vocabularies = build_vocabularies({data.name: data.splits["train"]})
    test = EncodedDataset(data.splits["test"], vocabularies, data.name)
    model, _ = build_tagger(TaggerConfig(output=args.output), vocabularies, seed=1)
    device = torch.device("cpu")
    rows = []
    for precision in args.precision.split(","):
        for budget in (int(b) for b in args.budgets.split(",")):
            predict_tags(model, test, vocabularies, data.name, device, precision, budget)
            seconds = []
            for _ in range(args.calls):
                started = time.perf_counter()
                predict_tags(model, test, vocabularies, data.name, device, precision, budget)
                seconds.append(time.perf_counter() - started)
            median = statistics.median(seconds)
            batches = token_budget_batches(test.lengths, budget)
            rows.append({"precision": precision, "batch_tokens": budget, "seconds": median,
                         "tokens_per_s": test.num_tokens / median, "padding": padding_share(test.lengths, batches),
                         "batches": len(batches)})
            row = rows[-1]
            print(f"{precision} budget {budget:5d}{' (default)' if budget == PREDICT_BATCH_TOKENS else '':10s} "
                  f"{row['batches']:4d} batches  padding {100 * row['padding']:4.1f}%  "
                  f"{row['tokens_per_s']:8.0f} tok/s", flush=True)
    print(json.dumps({"corpus": data.name, "test_tokens": test.num_tokens, "output": args.output,
                      "threads": args.threads, "rows": rows}))


if __name__ == "__main__":
    main()

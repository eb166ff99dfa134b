"""Training and prediction throughput of kd's default single-task tagger, next to a yardstick.

What is measured, per output layer (softmax, CRF) and numeric precision (fp32, bf16), on one corpus:

* training tokens/s: train-split tokens x epochs / wall time of `kd.training.loop.train` run the way
  `kd train` runs it (batch 32, Adam lr 1e-3, gradient clipping at norm 5, seed 1, no per-epoch
  evaluation). The time includes building every batch, as the yardstick's does, but not reading the
  corpus, building the vocabularies or encoding the sentences into index arrays;
* seconds per epoch (from the same run) and the CRF/softmax epoch-time ratio;
* prediction tokens/s: test-split tokens / wall time of `kd.training.evaluate.predict_tags` (its
  default batches of at most 4,096 padded tokens, batch construction and conversion to tag strings included);
* test F1 after those epochs: strict IOB2 entity F1 as `kd` reports it (`entity_scores`), and also
  seqeval's default (conlleval-style) F1, the metric the yardstick prints, so the two compare.

In the same run the yardstick (`shared/bench/yardstick_tagger.py`, a hand-written fp32 BiLSTM(-CRF)
of the same shape) trains and predicts on the same corpus with the same epochs and threads, for
softmax and CRF; the script prints both side by side with the kd/yardstick ratios, and a final JSON
line with every number (`--json-out` writes it to a file as well).

With `--profile`, it instead runs the stage profiler (bench/stage_profile.py) on one epoch per
selected model: kd's own training loop, its steps' stages timed through the loop's stage hook.
The machine-load harness (quiet waits, busy share, retries) is bench/throughput_harness.py.

Every kd model trains in a fresh worker process (as `kd train` does; oneDNN's kernels built for
one model's shapes would otherwise speed up the next). The numbers are wall-clock throughput, so
each measurement waits for the machine to be idle (`--wait-quiet`), records how much CPU other
processes took meanwhile (the `busy %` column) and is repeated when that was more than
`--max-busy` %; `--repeat N` measures everything N times, interleaved, and reports median timings.

    python bench/train_throughput.py --epochs 1 --precision fp32,bf16 --outputs softmax,crf
    python bench/train_throughput.py --profile --outputs crf --precision fp32
"""
from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from seqeval.metrics import f1_score as conlleval_f1

from kd.errors import KdError
from kd.models.device import PRECISIONS
from kd.models.predict import predict_tags
from kd.option_schema import OPTIONS
from kd.training.evaluate import entity_scores
from kd.training.loop import Trainable, TrainingHooks, TrainingOptions, train
from kd.training.schedule import supervised_loss
from stage_profile import profile_one
from throughput_harness import (BATCH_SIZE, CLIP_NORM, DEFAULT_DATA_DIR, LEARNING_RATE, REPO, SEED, Corpus,
                                busy_share, busy_text, cpu_monitor, environment, finish, fmt_or_dash, load_corpus,
                                measure_quietly, new_model, single_task_plan)

DEFAULT_YARDSTICK = REPO.parent / "shared" / "bench" / "yardstick_tagger.py"

# What kd should reach relative to the yardstick (printed as a check, not enforced).
TARGET_SPEEDUP = 2.0  # kd tokens/s over yardstick tokens/s, training and prediction
TARGET_F1_GAP = 0.01  # kd F1 at most this far below the yardstick's after equal epochs
TARGET_CRF_RATIO = 1.15  # CRF epoch time over softmax epoch time


# ----------------------------------------------------------------------------- kd measurement


@dataclass
class KdResult:
    output: str
    precision: str
    epochs: int
    train_tokens: int
    test_tokens: int
    train_s: float
    epoch_s: list[float]
    predict_s: float
    test_f1: float  # strict IOB2, as kd reports it
    test_f1_conlleval: float  # seqeval's default mode, as the yardstick reports it
    final_train_loss: float
    load: dict[str, float] = field(default_factory=dict)  # see `cpu_monitor`
    attempts: int = 1  # see `measure_quietly`

    @property
    def train_tok_s(self) -> float:
        return self.train_tokens * self.epochs / self.train_s

    @property
    def predict_tok_s(self) -> float:
        return self.test_tokens / self.predict_s

    @property
    def mean_epoch_s(self) -> float:
        return sum(self.epoch_s) / len(self.epoch_s)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "train_tok_s": self.train_tok_s, "predict_tok_s": self.predict_tok_s,
                "mean_epoch_s": self.mean_epoch_s}


def measure_kd(corpus: Corpus, output: str, precision: str, epochs: int) -> KdResult:
    """Trains a fresh model with kd's training loop, then tags and scores the test split."""
    device = torch.device("cpu")
    model, optimizer = new_model(corpus, output)
    options = TrainingOptions(epochs=epochs, batch_size=BATCH_SIZE, learning_rate=LEARNING_RATE,
                              clip_norm=CLIP_NORM, seed=SEED, precision=precision)
    epoch_ends: list[float] = []
    load: dict[str, float] = {}

    class NoteEpochEnd(TrainingHooks):
        def on_epoch(self, epoch: int, metrics: dict[str, float]) -> bool:
            epoch_ends.append(time.perf_counter())
            return False

    with cpu_monitor(load):
        start = time.perf_counter()
        result = train(Trainable(model, {corpus.name: optimizer}, single_task_plan(corpus.name, corpus.train, BATCH_SIZE),
                                 supervised_loss(model)), options, device, hooks=NoteEpochEnd())
        train_s = time.perf_counter() - start
        epoch_s = list(np.diff([start, *epoch_ends]))

        start = time.perf_counter()
        predicted = predict_tags(model, corpus.test, corpus.vocabularies, corpus.name, device, precision)
        predict_s = time.perf_counter() - start
    gold = corpus.gold_test_tags
    return KdResult(
        output=output, precision=precision, epochs=epochs, train_tokens=corpus.train.num_tokens,
        test_tokens=corpus.test.num_tokens, train_s=train_s, epoch_s=[float(s) for s in epoch_s],
        predict_s=predict_s, test_f1=entity_scores(gold, predicted).f1,
        test_f1_conlleval=float(conlleval_f1(gold, predicted)),
        final_train_loss=result.state.history[-1]["train_loss"], load=load)


# ----------------------------------------------------------------------------- yardstick


def run_yardstick(script: Path, corpus_dir: Path, crf: bool, epochs: int, threads: int) -> dict[str, Any]:
    """Runs the yardstick in a subprocess and returns its JSON line (plus `epoch_s`), or {"error": ...}."""
    command = [sys.executable, str(script), str(corpus_dir), "--crf", str(int(crf)),
               "--epochs", str(epochs), "--threads", str(threads)]
    load: dict[str, float] = {}
    with cpu_monitor(load):
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in completed.stdout.splitlines() if line.strip().startswith("{")]
    if completed.returncode != 0 or not lines:
        tail = (completed.stderr or completed.stdout).strip().splitlines()[-5:]
        return {"error": f"exit status {completed.returncode}: {' | '.join(tail)}", "command": command}
    numbers = json.loads(lines[-1])
    numbers["epoch_s"] = numbers["train_s"] / epochs
    numbers["command"] = " ".join(command)
    numbers["load"] = load
    return numbers


# ----------------------------------------------------------------------------- report


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def compare(kd: Sequence[KdResult], yardstick: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """kd/yardstick ratios per measured model, CRF/softmax epoch ratios, and which targets are met
    (None where the yardstick is missing)."""
    rows = []
    for r in kd:
        y = yardstick.get(r.output, {})
        y_f1 = y.get("test_f1")
        rows.append({
            "output": r.output, "precision": r.precision,
            "train_tok_s_ratio": ratio(r.train_tok_s, y.get("train_tok_s")),
            "predict_tok_s_ratio": ratio(r.predict_tok_s, y.get("predict_tok_s")),
            # Same metric as the yardstick (seqeval default mode); positive means kd is better.
            "f1_diff_points": None if y_f1 is None else 100 * (r.test_f1_conlleval - y_f1),
        })
    crf_ratios: dict[str, float | None] = {}
    by_key = {(r.output, r.precision): r for r in kd}
    for precision in dict.fromkeys(r.precision for r in kd):
        softmax, crf = by_key.get(("softmax", precision)), by_key.get(("crf", precision))
        if softmax and crf:
            crf_ratios[precision] = crf.mean_epoch_s / softmax.mean_epoch_s
    if "softmax" in yardstick and "crf" in yardstick:
        crf_ratios["yardstick"] = ratio(yardstick["crf"].get("epoch_s"), yardstick["softmax"].get("epoch_s"))

    def at_least(value: float | None, bound: float) -> bool | None:
        return None if value is None else value >= bound

    targets = {f"{row['output']} {row['precision']}": {
        "train_speedup": at_least(row["train_tok_s_ratio"], TARGET_SPEEDUP),
        "predict_speedup": at_least(row["predict_tok_s_ratio"], TARGET_SPEEDUP),
        "f1": at_least(row["f1_diff_points"], -100 * TARGET_F1_GAP),
    } for row in rows}
    for precision, value in crf_ratios.items():
        if precision != "yardstick" and value is not None:
            targets[f"crf/softmax {precision}"] = {"epoch_ratio": value <= TARGET_CRF_RATIO}
    return {"ratios": rows, "crf_softmax_epoch_ratio": crf_ratios, "targets_met": targets}


def print_table(kd: Sequence[KdResult], yardstick: dict[str, dict[str, Any]], comparison: dict[str, Any]) -> None:
    header = (f"{'model':<16}{'train tok/s':>12}{'pred tok/s':>12}{'epoch s':>9}{'F1 strict':>10}"
              f"{'F1 conll':>10}{'train x':>9}{'pred x':>8}{'dF1 pt':>8}{'busy %':>8}")
    print(header)
    print("-" * len(header))
    ratios = {(row["output"], row["precision"]): row for row in comparison["ratios"]}
    for r in kd:
        row = ratios[(r.output, r.precision)]
        print(f"{'kd ' + r.output + ' ' + r.precision:<16}{r.train_tok_s:>12.0f}{r.predict_tok_s:>12.0f}"
              f"{r.mean_epoch_s:>9.1f}{100 * r.test_f1:>10.2f}{100 * r.test_f1_conlleval:>10.2f}"
              f"{fmt_or_dash(row['train_tok_s_ratio'], '.2f'):>9}{fmt_or_dash(row['predict_tok_s_ratio'], '.2f'):>8}"
              f"{fmt_or_dash(row['f1_diff_points'], '+.2f'):>8}{busy_text(r.load):>8}")
    for output, y in yardstick.items():
        name = f"yardstick {output}"
        if "error" in y:
            print(f"{name:<16}  failed: {y['error']}")
            continue
        print(f"{name:<16}{y['train_tok_s']:>12.0f}{y['predict_tok_s']:>12.0f}{y['epoch_s']:>9.1f}"
              f"{'-':>10}{100 * y['test_f1']:>10.2f}{'':>25}{busy_text(y.get('load', {})):>8}")
    print()
    print("train x / pred x: kd tokens/s over the yardstick's (same output layer; the yardstick is fp32);")
    print("dF1 pt: kd minus yardstick F1 in points, both in seqeval's default mode (F1 conll).")
    print("busy %: CPU used by other processes during the measurement (+ hypervisor steal), share of all "
          "cores; above a few % the timings are not trustworthy.")
    crf = comparison["crf_softmax_epoch_ratio"]
    if crf:
        print("CRF/softmax epoch time: " + ", ".join(f"{k} {fmt_or_dash(v, '.2f')}" for k, v in crf.items()))
    print(f"targets: train and pred x >= {TARGET_SPEEDUP:g}, dF1 >= {-100 * TARGET_F1_GAP:g}, "
          f"kd CRF/softmax <= {TARGET_CRF_RATIO:g}")
    for name, checks in comparison["targets_met"].items():
        verdicts = ", ".join(f"{check} {'-' if ok is None else 'met' if ok else 'MISSED'}" for check, ok in checks.items())
        print(f"  {name}: {verdicts}")


# ----------------------------------------------------------------------------- worker processes

# Every kd model is trained in a fresh process, as `kd train` would be: oneDNN builds its LSTM
# kernels for each new input shape on first use, and a model measured after another in the same
# process would find many of them already built (and the yardstick, too, runs in its own process).
WORKER_RESULT = "@@kd-bench-result "


def run_worker(args: argparse.Namespace) -> int:
    output, precision = args.worker.split(":")
    corpus = load_corpus(args.corpus, args.data_dir)
    if args.profile:
        result = profile_one(corpus, output, precision)
    else:
        result = asdict(measure_kd(corpus, output, precision, args.epochs))
    print(WORKER_RESULT + json.dumps(result), flush=True)
    return 0


def in_worker(args: argparse.Namespace, output: str, precision: str) -> dict[str, Any]:
    """Runs one model in a worker process; echoes what it prints and returns its result."""
    command = [sys.executable, str(Path(__file__).resolve()), "--data-dir", str(args.data_dir), "--corpus",
               args.corpus, "--epochs", str(args.epochs), "--threads", str(args.threads),
               "--worker", f"{output}:{precision}", *(["--profile"] if args.profile else [])]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    result = None
    for line in completed.stdout.splitlines():
        if line.startswith(WORKER_RESULT):
            result = json.loads(line[len(WORKER_RESULT):])
        else:
            print(line)
    if completed.returncode != 0 or result is None:
        raise RuntimeError(f"kd {output} {precision} failed (exit status {completed.returncode}):\n"
                           + completed.stderr.strip())
    return result


def measure_all(args: argparse.Namespace, corpus_dir: Path
                ) -> tuple[dict[tuple[str, str], list[KdResult]], dict[str, list[dict[str, Any]]]]:
    """Every kd model and the yardstick, `--repeat` times over (interleaved, so slow spells of a
    shared machine spread over all of them)."""
    kd_samples: dict[tuple[str, str], list[KdResult]] = {}
    yardstick_samples: dict[str, list[dict[str, Any]]] = {}
    run_yardstick_too = not args.skip_yardstick and args.yardstick.is_file()
    if not args.skip_yardstick and not run_yardstick_too:
        print(f"warning: no yardstick at {args.yardstick}; skipping it", file=sys.stderr)
    for repeat in range(1, args.repeat + 1):
        suffix = f" (repeat {repeat}/{args.repeat})" if args.repeat > 1 else ""
        for output in args.outputs:
            for precision in args.precision:
                kd_samples.setdefault((output, precision), []).append(KdResult(**measure_quietly(
                    f"kd {output} {precision}{suffix}", functools.partial(in_worker, args, output, precision),
                    args)))
        if run_yardstick_too:
            for output in args.outputs:
                yardstick_samples.setdefault(output, []).append(measure_quietly(
                    f"yardstick {output}{suffix}", functools.partial(
                        run_yardstick, args.yardstick, corpus_dir, output == "crf", args.epochs, args.threads),
                    args))
    return kd_samples, yardstick_samples


def _median(values: Sequence[float]) -> float:
    return float(np.median(values))


def median_kd(samples: Sequence[KdResult]) -> KdResult:
    """Timings: the median over repeats; F1 and loss: the first repeat's (they differ only by
    floating-point reordering); load: the busiest repeat's."""
    first = samples[0]
    if len(samples) == 1:
        return first
    loads = [r.load for r in samples]
    return KdResult(**{
        **asdict(first),
        "train_s": _median([r.train_s for r in samples]),
        "epoch_s": [_median(column) for column in zip(*(r.epoch_s for r in samples))],
        "predict_s": _median([r.predict_s for r in samples]),
        "load": max(loads, key=lambda load: busy_share(load) or 0.0),
        "attempts": sum(r.attempts for r in samples),
    })


def median_yardstick(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Like `median_kd`, for the yardstick's numbers."""
    usable = [y for y in samples if "error" not in y]
    if not usable:
        return samples[0]
    result = dict(usable[0])
    for key in ("train_tok_s", "predict_tok_s", "train_s", "wall_s", "epoch_s"):
        result[key] = _median([y[key] for y in usable])
    result["load"] = max((y["load"] for y in usable), key=lambda load: busy_share(load) or 0.0)
    result["repeats"] = len(usable)
    return result


# ----------------------------------------------------------------------------- main


def parse_list(value: str, allowed: Sequence[str], option: str) -> list[str]:
    items = [item.strip() for item in value.split(",") if item.strip()]
    unknown = [item for item in items if item not in allowed]
    if not items or unknown:
        raise argparse.ArgumentTypeError(f"{option} {value}: use a comma-separated subset of {', '.join(allowed)}")
    return list(dict.fromkeys(items))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                        help="folder holding the corpora (default: %(default)s)")
    parser.add_argument("--corpus", default="NCBI-disease", help="corpus name or folder (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs per model (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default: %(default)s)")
    parser.add_argument("--precision", default="fp32,bf16",
                        type=lambda v: parse_list(v, PRECISIONS, "--precision"),
                        help="comma-separated precisions to measure (default: %(default)s)")
    parser.add_argument("--outputs", default="softmax,crf", type=lambda v: parse_list(v, OPTIONS["output"].choices, "--outputs"),
                        help="comma-separated output layers to measure (default: %(default)s)")
    parser.add_argument("--skip-yardstick", action="store_true", help="do not run the yardstick")
    parser.add_argument("--yardstick", type=Path, default=DEFAULT_YARDSTICK, help="yardstick script (default: %(default)s)")
    parser.add_argument("--profile", action="store_true",
                        help="instead of measuring throughput, time the stages of one training epoch and of "
                             "prediction for each selected model")
    parser.add_argument("--json-out", type=Path, help="also write the final JSON line to this file")
    parser.add_argument("--wait-quiet", type=float, default=600, metavar="SECONDS",
                        help="before each measurement, wait up to this long for other processes to leave the "
                             "machine idle; 0: do not wait (default: %(default)s)")
    parser.add_argument("--max-busy", type=float, default=5.0, metavar="PERCENT",
                        help="measure again when other processes used more than this share of the machine "
                             "meanwhile (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="measure everything this many times, interleaved, and report median timings "
                             "(default: %(default)s)")
    parser.add_argument("--retries", type=int, default=2,
                        help="how many times to measure again; the quietest attempt is kept (default: %(default)s)")
    parser.add_argument("--worker", metavar="OUTPUT:PRECISION", help=argparse.SUPPRESS)  # one model, internal
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.retries < 0:
        parser.error("--retries must be at least 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.worker:
        return run_worker(args)
    try:
        corpus = load_corpus(args.corpus, args.data_dir)
    except KdError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    summary: dict[str, Any] = {"benchmark": "train_throughput", **environment(args, corpus)}
    print(f"{corpus.name}: {summary['train_tokens']} train tokens, {summary['test_tokens']} test tokens, "
          f"{summary['num_tags']} tags; {args.threads} threads, torch {torch.__version__}", flush=True)

    try:
        if args.profile:
            summary["profile"] = [
                measure_quietly(f"profile {output} {precision}", functools.partial(in_worker, args, output, precision),
                                args)
                for output in args.outputs for precision in args.precision]
            return finish(summary, args.json_out, ok=True)
        kd_samples, yardstick_samples = measure_all(args, corpus.directory)
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    kd_results = [median_kd(samples) for samples in kd_samples.values()]
    yardstick = {output: median_yardstick(samples) for output, samples in yardstick_samples.items()}
    comparison = compare(kd_results, yardstick)
    print()
    print_table(kd_results, yardstick, comparison)
    summary.update({"kd": [r.to_json() for r in kd_results], "yardstick": yardstick, **comparison})
    if args.repeat > 1:
        summary["samples"] = {"kd": [r.to_json() for samples in kd_samples.values() for r in samples],
                              "yardstick": [y for samples in yardstick_samples.values() for y in samples]}
    return finish(summary, args.json_out, ok=not any("error" in y for y in yardstick.values()))



if __name__ == "__main__":
    sys.exit(main())

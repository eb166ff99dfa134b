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

With `--profile`, it instead trains one epoch per selected model with timers around each stage
(batch construction, character/shared/task BiLSTM forward and backward, output layers, CRF forward
algorithm, loss, optimizer step, ...) and times prediction and scoring likewise; the stages are
timed from outside kd (wrappers and gradient hooks on the model instance), kd itself is unchanged.

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
import contextlib
import datetime
import functools
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from seqeval.metrics import f1_score as conlleval_f1

import kd
from kd.data.batching import EncodedDataset
from kd.data.vocab import Vocabularies, build_vocabularies
from kd.errors import KdError
from kd.losses.supervised import hard_label_loss
from kd.models.tagger import OUTPUTS, Tagger
from kd.training.device import PRECISIONS, autocast
from kd.training.evaluate import entity_scores, predict_tags
from kd.training.jobs import ModelOptions, build_tagger, load_task
from kd.training.loop import TrainingOptions, train

from kd.training.tagger_job import alternating_plan, supervised_loss, task_optimizers


def single_task_plan(task: str, data: EncodedDataset, batch_size: int):
    """With one corpus the multi-corpus plan is exactly the single-task one."""
    return alternating_plan({task: data}, batch_size, "uniform")


REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = REPO.parent / "shared" / "datasets"
DEFAULT_YARDSTICK = REPO.parent / "shared" / "bench" / "yardstick_tagger.py"

# The options `kd train` uses by default.
BATCH_SIZE = 32
LEARNING_RATE = 1e-3
CLIP_NORM = 5.0
SEED = 1

# What kd should reach relative to the yardstick (printed as a check, not enforced).
TARGET_SPEEDUP = 2.0  # kd tokens/s over yardstick tokens/s, training and prediction
TARGET_F1_GAP = 0.01  # kd F1 at most this far below the yardstick's after equal epochs
TARGET_CRF_RATIO = 1.15  # CRF epoch time over softmax epoch time


# ----------------------------------------------------------------------------- machine load


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, steal) jiffies of the whole machine since boot, from /proc/stat; None elsewhere."""
    try:
        fields_ = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (fields_ + [0] * 8)[:8]
    return user + nice + system + irq + softirq, steal


def _own_cpu_s() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@contextlib.contextmanager
def cpu_monitor(into: dict[str, float]) -> Iterator[None]:
    """Records how busy the machine was with work other than this process (and its children)
    while the block ran: `foreign_cpu_share` is that CPU time over wall time x cores (0 = the
    measurement had the machine to itself), `steal_share` the time the hypervisor gave to others,
    `own_cpu_s` the CPU time of this process and its children (less sensitive to other load than
    wall time, though idle threads that spin count in it)."""
    jiffy = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    before, own_before, start = _cpu_jiffies(), _own_cpu_s(), time.perf_counter()
    try:
        yield
    finally:
        after, own_after, wall = _cpu_jiffies(), _own_cpu_s(), time.perf_counter() - start
        if before is not None and after is not None and wall > 0:
            capacity = wall * (os.cpu_count() or 1)
            busy = (after[0] - before[0]) / jiffy
            into["foreign_cpu_share"] = max(0.0, busy - (own_after - own_before)) / capacity
            into["steal_share"] = (after[1] - before[1]) / jiffy / capacity
        into["own_cpu_s"] = own_after - own_before
        into["wall_s"] = wall


def busy_share(load: dict[str, float]) -> float | None:
    """The share of the machine others used during a measurement (see `cpu_monitor`)."""
    if "foreign_cpu_share" not in load:
        return None
    return load["foreign_cpu_share"] + load.get("steal_share", 0.0)


def wait_for_quiet(max_wait_s: float, quiet_s: float = 10.0, threshold: float = 0.05) -> float:
    """Waits (at most `max_wait_s`) until the machine has been used less than `threshold` of its
    cores for `quiet_s` seconds in a row; returns the seconds waited."""
    jiffy = os.sysconf("SC_CLK_TCK")
    cores = os.cpu_count() or 1
    start = quiet_since = time.perf_counter()
    previous = _cpu_jiffies()
    while previous is not None and time.perf_counter() - start < max_wait_s:
        time.sleep(1.0)
        now, current = time.perf_counter(), _cpu_jiffies()
        if current is None:
            break
        busy = (current[0] - previous[0] + current[1] - previous[1]) / jiffy / cores  # over about 1 s
        previous = current
        if busy > threshold:
            quiet_since = now
        elif now - quiet_since >= quiet_s:
            break
    return time.perf_counter() - start


# ----------------------------------------------------------------------------- data


@dataclass
class Corpus:
    """One corpus, encoded once and shared by every measured model."""

    name: str
    directory: Path
    vocabularies: Vocabularies
    train: EncodedDataset
    test: EncodedDataset

    @property
    def gold_test_tags(self) -> list[list[str]]:
        return [list(s.tags) for s in self.test.sentences]


def load_corpus(corpus: str, data_dir: Path) -> Corpus:
    """Reads train and test, builds the vocabularies from train (as `kd train` does) and encodes both."""
    data = load_task(corpus, data_dir, ["train", "test"])
    vocabularies = build_vocabularies({data.name: data.splits["train"]})
    return Corpus(name=data.name, directory=data.directory, vocabularies=vocabularies,
                  train=EncodedDataset(data.splits["train"], vocabularies, data.name),
                  test=EncodedDataset(data.splits["test"], vocabularies, data.name))


def new_model(corpus: Corpus, output: str) -> tuple[Tagger, torch.optim.Optimizer]:
    """The default-size tagger and the optimizer `kd train` gives it."""
    model, _ = build_tagger(ModelOptions(output=output), corpus.vocabularies, SEED)
    return model, task_optimizers(model, LEARNING_RATE)[corpus.name]


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

    def note_epoch_end(epoch: int, metrics: dict[str, float]) -> bool:
        epoch_ends.append(time.perf_counter())
        return False

    with cpu_monitor(load):
        start = time.perf_counter()
        result = train(model, {corpus.name: optimizer}, single_task_plan(corpus.name, corpus.train, BATCH_SIZE),
                       supervised_loss(model), options, device, callbacks=[note_epoch_end])
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


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _busy(load: dict[str, float]) -> str:
    return _fmt(None if (share := busy_share(load)) is None else 100 * share, ".1f")


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
              f"{_fmt(row['train_tok_s_ratio'], '.2f'):>9}{_fmt(row['predict_tok_s_ratio'], '.2f'):>8}"
              f"{_fmt(row['f1_diff_points'], '+.2f'):>8}{_busy(r.load):>8}")
    for output, y in yardstick.items():
        name = f"yardstick {output}"
        if "error" in y:
            print(f"{name:<16}  failed: {y['error']}")
            continue
        print(f"{name:<16}{y['train_tok_s']:>12.0f}{y['predict_tok_s']:>12.0f}{y['epoch_s']:>9.1f}"
              f"{'-':>10}{100 * y['test_f1']:>10.2f}{'':>25}{_busy(y.get('load', {})):>8}")
    print()
    print("train x / pred x: kd tokens/s over the yardstick's (same output layer; the yardstick is fp32);")
    print("dF1 pt: kd minus yardstick F1 in points, both in seqeval's default mode (F1 conll).")
    print("busy %: CPU used by other processes during the measurement (+ hypervisor steal), share of all "
          "cores; above a few % the timings are not trustworthy.")
    crf = comparison["crf_softmax_epoch_ratio"]
    if crf:
        print("CRF/softmax epoch time: " + ", ".join(f"{k} {_fmt(v, '.2f')}" for k, v in crf.items()))
    print(f"targets: train and pred x >= {TARGET_SPEEDUP:g}, dF1 >= {-100 * TARGET_F1_GAP:g}, "
          f"kd CRF/softmax <= {TARGET_CRF_RATIO:g}")
    for name, checks in comparison["targets_met"].items():
        verdicts = ", ".join(f"{check} {'-' if ok is None else 'met' if ok else 'MISSED'}" for check, ok in checks.items())
        print(f"  {name}: {verdicts}")


# ----------------------------------------------------------------------------- profile


class StageTimer:
    """Accumulates wall-clock seconds per named stage. Nested stages count in both."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.marks: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def wrap(self, name: str, function: Callable) -> Callable:
        @functools.wraps(function)
        def timed(*args, **kwargs):
            with self.stage(name):
                return function(*args, **kwargs)
        return timed

    def mark(self, name: str, first: bool = False) -> Callable[[torch.Tensor], None]:
        """A gradient hook that records when the gradient of a tensor is complete. A part called
        several times per step (the character BiLSTM, once per group of forms) hooks several
        tensors: its backward starts at the first gradient reaching an output (`first`) and ends
        at the last one reaching an input."""
        def hook(grad: torch.Tensor) -> None:
            if not (first and name in self.marks):
                self.marks[name] = time.perf_counter()
        return hook


def instrument(model: Tagger, timer: StageTimer) -> None:
    """Wraps the model instance's parts in timers and hooks their inputs and outputs, so that the
    forward time of each part and (from gradient arrival times) its backward time can be read.
    Only this instance changes; kd's classes do not."""

    def boundary(name: str, function: Callable) -> Callable:
        def timed(x: torch.Tensor, *args, **kwargs):
            with timer.stage(f"forward: {name}"):
                y = function(x, *args, **kwargs)
            if torch.is_grad_enabled():
                if x.requires_grad:
                    x.register_hook(timer.mark(f"{name} input"))
                y.register_hook(timer.mark(f"{name} output", first=True))
            return y
        return timed

    model.char_lstm.final_states = boundary("char BiLSTM", model.char_lstm.final_states)
    model.shared_lstm.forward = boundary("shared BiLSTM", model.shared_lstm.forward)
    for head in model.heads:
        head.lstm.forward = boundary("task BiLSTM", head.lstm.forward)
        if head.crf is not None:
            head.crf.log_partition = timer.wrap("forward: CRF forward algorithm (log Z)", head.crf.log_partition)
            head.crf.score = timer.wrap("forward: CRF gold path score", head.crf.score)
    run_head = model.run_head

    def timed_run_head(*args, **kwargs):
        with timer.stage("forward: task head (BiLSTM + linear layers)"):
            output = run_head(*args, **kwargs)
        if torch.is_grad_enabled():
            output.logits.register_hook(timer.mark("head output"))
        return output

    model.run_head = timed_run_head
    model.decode = timer.wrap("decode (argmax or Viterbi)", model.decode)


BACKWARD_SEGMENTS = (
    # (stage, gradient that starts it, gradient that ends it); None = start/end of backward()
    ("backward: loss / CRF", None, "head output"),
    ("backward: output linear layers", "head output", "task BiLSTM output"),
    ("backward: task BiLSTM", "task BiLSTM output", "task BiLSTM input"),
    ("backward: shared BiLSTM", "task BiLSTM input", "shared BiLSTM input"),
    ("backward: concat, dropout, word embedding", "shared BiLSTM input", "char BiLSTM output"),
    ("backward: char BiLSTM", "char BiLSTM output", "char BiLSTM input"),
    ("backward: char embedding", "char BiLSTM input", None),
)


def profile_training_epoch(corpus: Corpus, model: Tagger, optimizer: torch.optim.Optimizer, precision: str,
                           timer: StageTimer) -> float:
    """One training epoch of an instrumented model, step for step what `kd.training.loop.train`
    does, with stage timers. Returns the epoch's wall time."""
    device = torch.device("cpu")
    corpus.train.batch = timer.wrap("batch construction", corpus.train.batch)
    crf = model.crf(corpus.name)
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    generator = np.random.default_rng(SEED)
    torch.manual_seed(SEED)
    model.train()
    start = time.perf_counter()
    try:
        for task, batch in single_task_plan(corpus.name, corpus.train, BATCH_SIZE)(generator):
            batch = batch.to(device)
            with timer.stage("zero_grad"):
                optimizer.zero_grad(set_to_none=True)
            with timer.stage("forward (all)"), autocast(device, precision):
                tagger_output = model(batch, task)
                with timer.stage("forward: loss (CRF NLL or cross-entropy)"):
                    loss = hard_label_loss(tagger_output, batch.tags, crf)  # as `supervised_loss` does
            timer.marks.clear()
            with timer.stage("backward (all)"):
                began = time.perf_counter()
                loss.backward()
                ended = time.perf_counter()
            marks = timer.marks
            for name, first, last in BACKWARD_SEGMENTS:
                t0 = began if first is None else marks.get(first)
                t1 = ended if last is None else marks.get(last)
                if t0 is not None and t1 is not None:
                    timer.seconds[name] += t1 - t0
            with timer.stage("gradient clipping"):
                torch.nn.utils.clip_grad_norm_(parameters, CLIP_NORM)
            with timer.stage("optimizer step (Adam)"):
                optimizer.step()
            float(loss.detach())
    finally:
        del corpus.train.batch  # back to the class's method
    return time.perf_counter() - start


def profile_prediction(corpus: Corpus, model: Tagger, precision: str, timer: StageTimer) -> tuple[float, float]:
    """Prediction on the test split by an instrumented model, with stage timers. Returns the wall
    time of `predict_tags` and of scoring its output."""
    device = torch.device("cpu")
    corpus.test.batch = timer.wrap("batch construction", corpus.test.batch)
    try:
        start = time.perf_counter()
        predicted = predict_tags(model, corpus.test, corpus.vocabularies, corpus.name, device, precision)
        predict_s = time.perf_counter() - start
    finally:
        del corpus.test.batch
    start = time.perf_counter()
    entity_scores(corpus.gold_test_tags, predicted)
    score_s = time.perf_counter() - start
    return predict_s, score_s


# The forward stages nest: these are reported as parts of their parent.
_FORWARD_PARTS = {
    "forward: char BiLSTM", "forward: shared BiLSTM", "forward: task head (BiLSTM + linear layers)",
    "forward: loss (CRF NLL or cross-entropy)",
}


def breakdown(seconds: dict[str, float], total: float, kind: str) -> list[tuple[str, float, float]]:
    """Exclusive stages (they add up to the total with the 'other' line) as (name, seconds, percent)."""
    s = defaultdict(float, seconds)  # a stage that never ran took no time
    rows: list[tuple[str, float]] = [("batch construction", s["batch construction"])]
    if kind == "train":
        crf_forward = s["forward: CRF forward algorithm (log Z)"] + s["forward: CRF gold path score"]
        rows += [
            ("forward: char BiLSTM", s["forward: char BiLSTM"]),
            ("forward: shared BiLSTM", s["forward: shared BiLSTM"]),
            ("forward: task BiLSTM", s["forward: task BiLSTM"]),
            ("forward: output linear layers + dropout",
             s["forward: task head (BiLSTM + linear layers)"] - s["forward: task BiLSTM"]),
            ("forward: CRF forward algorithm (log Z)", s["forward: CRF forward algorithm (log Z)"]),
            ("forward: CRF gold path score", s["forward: CRF gold path score"]),
            ("forward: loss, rest (cross-entropy / CRF casts)",
             s["forward: loss (CRF NLL or cross-entropy)"] - crf_forward),
            ("forward: rest (embedding, concat, dropout, reversal index)",
             s["forward (all)"] - s["forward: char BiLSTM"] - s["forward: shared BiLSTM"]
             - s["forward: task head (BiLSTM + linear layers)"] - s["forward: loss (CRF NLL or cross-entropy)"]),
        ]
        segments = [name for name, _, _ in BACKWARD_SEGMENTS]
        rows += [(name, s[name]) for name in segments]
        rows += [("backward: rest", s["backward (all)"] - sum(s[name] for name in segments)),
                 ("gradient clipping", s["gradient clipping"]), ("optimizer step (Adam)", s["optimizer step (Adam)"]),
                 ("zero_grad", s["zero_grad"])]
    else:
        rows += [
            ("forward: char BiLSTM", s["forward: char BiLSTM"]),
            ("forward: shared BiLSTM", s["forward: shared BiLSTM"]),
            ("forward: task BiLSTM", s["forward: task BiLSTM"]),
            ("forward: output linear layers",
             s["forward: task head (BiLSTM + linear layers)"] - s["forward: task BiLSTM"]),
            ("decode (argmax or Viterbi)", s["decode (argmax or Viterbi)"]),
        ]
    rows.append(("other (loop, tensor moves, tag strings, ...)", total - sum(v for _, v in rows)))
    return [(name, value, 100 * value / total) for name, value in rows]


def profile_one(corpus: Corpus, output: str, precision: str) -> dict[str, Any]:
    """Stage breakdown of one training epoch and of prediction; prints it and returns it."""
    key = f"{output} {precision}"
    load: dict[str, float] = {}
    model, optimizer = new_model(corpus, output)
    timer = StageTimer()
    instrument(model, timer)
    with cpu_monitor(load):
        epoch_s = profile_training_epoch(corpus, model, optimizer, precision, timer)
        train_rows = breakdown(timer.seconds, epoch_s, "train")
        timer.seconds.clear()
        predict_s, score_s = profile_prediction(corpus, model, precision, timer)
        predict_rows = breakdown(timer.seconds, predict_s, "predict")
    print(f"== {key}: one training epoch, {epoch_s:.1f} s ({corpus.train.num_tokens / epoch_s:.0f} tok/s "
          f"with timers); busy {_busy(load)} %")
    for name, value, percent in train_rows:
        print(f"  {name:<58}{value:>8.2f} s{percent:>7.1f} %")
    print(f"== {key}: prediction on test, {predict_s:.2f} s ({corpus.test.num_tokens / predict_s:.0f} tok/s); "
          f"scoring (entity_scores) {score_s:.2f} s = {100 * score_s / epoch_s:.1f} % of a training epoch")
    for name, value, percent in predict_rows:
        print(f"  {name:<58}{value:>8.2f} s{percent:>7.1f} %")
    return {"output": output, "precision": precision, "epoch_s": epoch_s, "predict_s": predict_s,
            "score_s": score_s, "load": load, "train": {n: [v, p] for n, v, p in train_rows},
            "predict": {n: [v, p] for n, v, p in predict_rows}}


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


# ----------------------------------------------------------------------------- quiet measurements


def measure_quietly(name: str, measure: Callable[[], dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Runs a measurement when the machine is quiet, and again (up to `--retries` times) when other
    processes took more than `--max-busy` % of the machine meanwhile; keeps the quietest attempt."""
    best: dict[str, Any] | None = None
    for attempt in range(1, args.retries + 2):
        waited = wait_for_quiet(args.wait_quiet) if args.wait_quiet > 0 else 0.0
        print(f"{name}: measuring{f' (attempt {attempt})' if attempt > 1 else ''}"
              f"{f' after waiting {waited:.0f} s for a quiet machine' if waited >= 1 else ''} ...", flush=True)
        result = measure()
        if "error" in result:
            return result
        busy = busy_share(result.get("load", {}))
        result["attempts"] = attempt
        if best is None or (busy or 0.0) < (busy_share(best.get("load", {})) or 0.0):
            best = result
        if busy is None or 100 * busy <= args.max_busy:
            break
        print(f"{name}: other processes used {100 * busy:.0f} % of the machine meanwhile", flush=True)
    assert best is not None
    return best


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
    parser.add_argument("--outputs", default="softmax,crf", type=lambda v: parse_list(v, OUTPUTS, "--outputs"),
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


def environment(args: argparse.Namespace, corpus: Corpus) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "corpus": corpus.name,
        "epochs": args.epochs, "threads": args.threads, "torch": torch.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "cpu": _cpu_name(), "cpu_count": os.cpu_count(),
        "kd_path": str(Path(kd.__file__).resolve().parent),
        "train_sentences": len(corpus.train), "train_tokens": corpus.train.num_tokens,
        "test_sentences": len(corpus.test), "test_tokens": corpus.test.num_tokens,
        "num_tags": len(corpus.vocabularies.tags[corpus.name]),
    }


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


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
            return _finish(summary, args.json_out, ok=True)
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
    return _finish(summary, args.json_out, ok=not any("error" in y for y in yardstick.values()))


def _finish(summary: dict[str, Any], json_out: Path | None, ok: bool) -> int:
    line = json.dumps(summary)
    print(line)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(line + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

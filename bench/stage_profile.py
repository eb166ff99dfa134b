"""The stages of kd's training step and of prediction, timed: where an epoch of the default
single-task tagger goes (batch construction, character/shared/task BiLSTM forward and backward,
output layers, CRF forward algorithm, loss, clipping, optimizer step) and where prediction goes.

Training runs `kd.training.loop.train` itself: its stage hook times zero_grad, forward, backward,
clipping and the optimizer step of every real step; the parts of the model are timed by wrappers and
gradient hooks on the model instance (kd's classes are unchanged). `bench/train_throughput.py
--profile` runs it for each selected model in a fresh worker process.
"""
from __future__ import annotations

import contextlib
import functools
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import torch

from kd.models.predict import predict_tags
from kd.models.tagger import Tagger
from kd.training.evaluate import entity_scores
from kd.training.loop import Trainable, TrainingHooks, TrainingOptions, train
from kd.training.schedule import supervised_loss
from throughput_harness import (BATCH_SIZE, CLIP_NORM, LEARNING_RATE, SEED, Corpus, busy_text, cpu_monitor, new_model,
                                single_task_plan)


class StageHooks(TrainingHooks):
    """The training loop's hooks that time its stages with a StageTimer."""

    def __init__(self, timer: "StageTimer") -> None:
        self.timer = timer

    def stage(self, name: str):
        return self.timer.step_stage(name)


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

    @contextlib.contextmanager
    def step_stage(self, name: str) -> Iterator[None]:
        """The training loop's stage hook: times each stage of a step; backward is also split into
        the parts of the model, from when each part's gradients arrived (`mark`)."""
        if name != "backward (all)":
            with self.stage(name):
                yield
            return
        self.marks.clear()
        began = time.perf_counter()
        with self.stage(name):
            yield
        ended = time.perf_counter()
        for segment, first, last in BACKWARD_SEGMENTS:
            t0 = began if first is None else self.marks.get(first)
            t1 = ended if last is None else self.marks.get(last)
            if t0 is not None and t1 is not None:
                self.seconds[segment] += t1 - t0

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
    """One epoch of `kd.training.loop.train` itself over an instrumented model, its steps' stages
    timed through the loop's stage hook. Returns the epoch's wall time."""
    options = TrainingOptions(epochs=1, batch_size=BATCH_SIZE, learning_rate=LEARNING_RATE, clip_norm=CLIP_NORM,
                              seed=SEED, precision=precision)
    corpus.train.batch = timer.wrap("batch construction", corpus.train.batch)
    model.forward = timer.wrap("forward: model", model.forward)  # the rest of `forward (all)` is the loss
    start = time.perf_counter()
    try:
        train(Trainable(model, {corpus.name: optimizer}, single_task_plan(corpus.name, corpus.train, BATCH_SIZE),
                        supervised_loss(model)), options, torch.device("cpu"), hooks=StageHooks(timer))
    finally:
        del corpus.train.batch  # back to the class's method
        del model.forward
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


def breakdown(seconds: dict[str, float], total: float, kind: str) -> list[tuple[str, float, float]]:
    """Exclusive stages (they add up to the total with the 'other' line) as (name, seconds, percent)."""
    s = defaultdict(float, seconds)  # a stage that never ran took no time
    rows: list[tuple[str, float]] = [("batch construction", s["batch construction"])]
    if kind == "train":
        crf_forward = s["forward: CRF forward algorithm (log Z)"] + s["forward: CRF gold path score"]
        loss = s["forward (all)"] - s["forward: model"]  # the loss function's own work, around the model
        rows += [
            ("forward: char BiLSTM", s["forward: char BiLSTM"]),
            ("forward: shared BiLSTM", s["forward: shared BiLSTM"]),
            ("forward: task BiLSTM", s["forward: task BiLSTM"]),
            ("forward: output linear layers + dropout",
             s["forward: task head (BiLSTM + linear layers)"] - s["forward: task BiLSTM"]),
            ("forward: CRF forward algorithm (log Z)", s["forward: CRF forward algorithm (log Z)"]),
            ("forward: CRF gold path score", s["forward: CRF gold path score"]),
            ("forward: loss, rest (cross-entropy / CRF casts)", loss - crf_forward),
            ("forward: rest (embedding, concat, dropout, reversal index)",
             s["forward: model"] - s["forward: char BiLSTM"] - s["forward: shared BiLSTM"]
             - s["forward: task head (BiLSTM + linear layers)"]),
        ]
        segments = [name for name, _, _ in BACKWARD_SEGMENTS]
        rows += [(name, s[name]) for name in segments]
        rows += [("backward: rest", s["backward (all)"] - sum(s[name] for name in segments)),
                 ("gradient clipping", s["gradient clipping"]), ("optimizer step (Adam)", s["optimizer step"]),
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
          f"with timers); busy {busy_text(load)} %")
    for name, value, percent in train_rows:
        print(f"  {name:<58}{value:>8.2f} s{percent:>7.1f} %")
    print(f"== {key}: prediction on test, {predict_s:.2f} s ({corpus.test.num_tokens / predict_s:.0f} tok/s); "
          f"scoring (entity_scores) {score_s:.2f} s = {100 * score_s / epoch_s:.1f} % of a training epoch")
    for name, value, percent in predict_rows:
        print(f"  {name:<58}{value:>8.2f} s{percent:>7.1f} %")
    return {"output": output, "precision": precision, "epoch_s": epoch_s, "predict_s": predict_s,
            "score_s": score_s, "load": load, "train": {n: [v, p] for n, v, p in train_rows},
            "predict": {n: [v, p] for n, v, p in predict_rows}}



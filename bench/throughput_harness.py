"""The harness shared by kd's throughput benchmarks (bench/train_throughput.py, bench/stage_profile.py):
how busy the machine was during a measurement, waiting for it to be quiet and measuring again when it
was not, the corpus every measured model shares, and the run's environment."""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import kd
from kd.data.batching import EncodedDataset
from kd.data.vocab import Vocabularies, build_vocabularies
from kd.models.tagger import Tagger, TaggerConfig
from kd.training.job_definition import build_tagger, load_task
from kd.training.schedule import alternating_plan, task_optimizers

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = REPO.parent / "shared" / "datasets"

# The options `kd train` uses by default.
BATCH_SIZE = 32
LEARNING_RATE = 1e-3
CLIP_NORM = 5.0
SEED = 1


def single_task_plan(task: str, data: EncodedDataset, batch_size: int):
    """With one corpus the multi-corpus plan is exactly the single-task one."""
    return alternating_plan({task: data}, batch_size, "uniform")


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
    model, _ = build_tagger(TaggerConfig(output=output), corpus.vocabularies, SEED)
    return model, task_optimizers(model, LEARNING_RATE)[corpus.name]


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


def finish(summary: dict[str, Any], json_out: Path | None, ok: bool) -> int:
    line = json.dumps(summary)
    print(line)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(line + "\n")
    return 0 if ok else 1


def fmt_or_dash(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def busy_text(load: dict[str, float]) -> str:
    return fmt_or_dash(None if (share := busy_share(load)) is None else 100 * share, ".1f")

"""Epoch time of a distilled student against the single-task model it replaces.

On one corpus (default NCBI-disease from ../shared/datasets), default sizes, CPU, one epoch each over
train+devel, batch 32, the way `kd distill` trains (the same loss functions and target sources):

* stm: the single-task model, hard labels only;
* cache_logits: a student with `--loss logits` reading its teacher's logits from a cache;
* cache_hidden: a student with `--loss intermediate` reading logits, task and shared BiLSTM outputs;
* live_logits: a student with `--loss logits` whose teacher runs on every batch (`--teacher`);
* live_ensemble3: the same with three teachers of different seeds averaged on every batch
  (`--teacher A,B,C`), the method's seed ensemble, whose cache costs a student the same as one teacher's.

Each teacher is a default-size tagger over the corpus with random weights: its cost per token is a
trained teacher's, and epoch time is all this measures. Every epoch runs in a fresh process;
`--repeat N` interleaves N rounds and reports medians. The cache is float16, as `kd cache-logits`
writes by default, read through memory maps. Targets (issue 4): cache_logits <= 1.10x stm,
cache_hidden <= 1.30x stm, cache_logits at least 1.5x faster than live_logits.

    python bench/distill.py [--data-dir ../shared/datasets] [--corpus NCBI-disease] [--threads 2] [--repeat N]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path

import torch

from kd.cache.knowledge import TeacherKnowledge
from kd.cache.store import CacheReader, CacheWriter, Manifest
from kd.cache.teachers import BiLSTMTeacher, layer_widths, teacher_outputs_for_sentences
from kd.data.vocab import build_vocabularies
from kd.training.assemble import assemble
from kd.training.distillation import DistillOptions
from kd.models.tagger import TaggerConfig
from kd.training.job_definition import TaggerJob, build_tagger, load_task
from kd.training.loop import TrainingOptions

SPLITS = ["train", "devel"]


def build_cache(teacher: BiLSTMTeacher, task: str, sentences_by_split: dict, directory: Path, dtype: str) -> float:
    started = time.perf_counter()
    writer = CacheWriter(directory, dtype)
    entries = {task: {}}
    for split, sentences in sentences_by_split.items():
        rows = teacher_outputs_for_sentences([teacher], task, sentences, ["logits", "task", "shared"],
                                             torch.device("cpu"))
        entries[task][split] = writer.write_split(task, split, [s.tokens for s in sentences], rows)
    widths = layer_widths(teacher, task)
    writer.commit(Manifest(teacher_runs=["bench"], ensemble="single", teacher_outputs=[teacher.output],
                           tasks={task: teacher.vocabularies.tags[task]}, splits=entries,
                           layers=["logits", "task", "shared"], dtype=dtype,
                           widths={task: {k: widths[k] for k in ("logits", "task", "shared")}}))
    return time.perf_counter() - started


def make_teachers(vocabularies, corpus: str, count: int) -> list[BiLSTMTeacher]:
    """Default-size teachers with random weights (seeds 7, 8, ...): the first is the cached one."""
    teachers = []
    for seed in range(7, 7 + count):
        model, _ = build_tagger(TaggerConfig(), vocabularies, seed=seed)
        teachers.append(BiLSTMTeacher(run_id=f"bench-{seed}", model=model.eval(), vocabularies=vocabularies,
                                      corpora=[corpus], data_dir=None))
    return teachers


def live_teacher_count(kind: str) -> int:
    """live_logits: one teacher; live_ensembleN: N teachers of different seeds, averaged."""
    if kind == "live_logits":
        return 1
    return int(kind.removeprefix("live_ensemble"))


def epoch_seconds(kind: str, data_dir: Path, corpus: str, cache_dir: Path, threads: int, seed: int) -> float:
    """One epoch of one kind of student, assembled as `kd distill` assembles it, in a fresh process
    (oneDNN builds kernels per input shape, and a model measured after another in the same process
    would reuse them)."""
    torch.set_num_threads(threads)
    data = load_task(corpus, data_dir, SPLITS)
    task = data.name
    distill, teacher = None, None
    if kind != "stm":
        live = kind.startswith("live_")
        hidden = kind == "cache_hidden"
        if live:
            vocabularies = build_vocabularies({task: data.sentences(SPLITS)})
            teacher = TeacherKnowledge.from_teachers(make_teachers(vocabularies, task, live_teacher_count(kind)), task)
        else:
            teacher = TeacherKnowledge.from_cache(CacheReader(cache_dir), task, "bench")
        distill = DistillOptions(loss="intermediate" if hidden else "logits", alpha=0.5, gamma=0.5 if hidden else 0.0,
                                 kappa=0.5 if hidden else 0.0,
                                 **({"teacher_runs": teacher.teacher_runs} if live else {"cache_run": "bench"}))
    job = TaggerJob(corpora=[corpus], data_dir=str(data_dir), train_splits=SPLITS, device="cpu",
                    training=TrainingOptions(epochs=1, seed=seed), distill=distill)
    assembly = assemble(job, teacher)
    started = time.perf_counter()
    assembly.train()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets")
    parser.add_argument("--corpus", default="NCBI-disease")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    parser.add_argument("--kinds", default="stm,cache_logits,cache_hidden,live_logits,live_ensemble3",
                        help="stm, cache_logits, cache_hidden, live_logits, live_ensembleN (N live teachers).")
    parser.add_argument("--repeat", type=int, default=1, help="Measure every kind this many times, interleaved; "
                                                              "medians are reported.")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kinds = args.kinds.split(",")

    data = load_task(args.corpus, args.data_dir, SPLITS)
    vocabularies = build_vocabularies({data.name: data.sentences(SPLITS)})
    tokens = sum(len(s) for s in data.sentences(SPLITS))
    samples: dict[str, list[float]] = {kind: [] for kind in kinds}
    spawn = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as folder:
        cache_dir = Path(folder) / "cache"
        cache_s = build_cache(make_teachers(vocabularies, data.name, 1)[0], data.name, data.splits, cache_dir,
                              args.dtype)
        with spawn.Pool(1, maxtasksperchild=1) as pool:
            for _ in range(args.repeat):
                for kind in kinds:
                    samples[kind].append(pool.apply(epoch_seconds, (kind, args.data_dir, args.corpus, cache_dir,
                                                                    args.threads, 1)))
    seconds = {kind: statistics.median(values) for kind, values in samples.items()}
    stm = seconds.get("stm")
    cached = seconds.get("cache_logits")
    report = {"corpus": data.name, "tokens_per_epoch": tokens, "threads": args.threads, "cache_dtype": args.dtype,
              "cache_build_s": cache_s, "repeat": args.repeat, "epoch_s": seconds, "samples": samples,
              "ratio_to_stm": {k: v / stm for k, v in seconds.items()} if stm else {},
              "live_over_cache_logits": ({k: v / cached for k, v in seconds.items() if k.startswith("live_")}
                                         if cached else {}),
              "targets": {"cache_logits": "<= 1.10x stm", "cache_hidden": "<= 1.30x stm",
                          "live_over_cache_logits": ">= 1.5"}}
    print(f"{data.name}: {tokens} tokens per epoch (train+devel), {args.threads} threads, cache {args.dtype} "
          f"built in {cache_s:.1f} s; medians of {args.repeat}")
    for kind, value in seconds.items():
        ratio = f"{value / stm:.3f}x stm" if stm else ""
        print(f"  {kind:15s} {value:7.1f} s/epoch  {tokens / value:8.0f} tok/s  {ratio}  "
              f"samples {', '.join(f'{v:.1f}' for v in samples[kind])}")
    for kind, ratio in report["live_over_cache_logits"].items():
        print(f"  {kind} / cache_logits: {ratio:.2f}x")
    print(json.dumps(report))
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

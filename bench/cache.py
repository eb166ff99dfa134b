"""Cost of caching a teacher's outputs, and of reading them back while a student trains.

In a throwaway MLflow store (sqlite in a temporary folder) the script

1. trains a multi-task teacher (MTM, default sizes, softmax output) briefly on three corpora. To keep
   this quick it trains on truncated copies of the corpora (`--max-sentences` train sentences each,
   a quarter of that of devel and test): the teacher only has to exist, its accuracy is not measured;
2. caches the teacher's outputs on the FULL train+devel splits of those corpora with
   `kd.cache.build.build_cache` (what `kd cache-logits` calls): layers=logits in float16 and float32
   (seconds and tokens/s; each `--repeats` times, the fastest kept, every repeat's rate shown), and
   float16 logits with `--precision bf16` (`--no-bf16` skips it); then every layer (logits, task,
   shared, marginals) in both dtypes, once (bytes per token of each layer, and the seconds those took);
3. opens the float16 and float32 logits caches as a student would (`open_cache_run` +
   `CachedTargets` over NCBI-disease train+devel, which checks every sentence's hash) and iterates
   one epoch of student batches (batch 32, length-bucketed: `bucketed_batches`,
   `EncodedDataset.batch`, `CachedTargets.gather`), timing the gathers apart from batch building;
4. trains a default-size single-task softmax model one epoch on NCBI-disease train+devel with
   `kd.training.loop.train` (as `kd train` does, without evaluation), and reports the cache
   iteration time as a percentage of that epoch.

Targets: caching >= 20,000 tokens/s on 2 CPU cores for logits; iterating an epoch of cached logits
adds < 5% to a student epoch.

`tokens/s (kd)` is the run's own `tokens_per_second` metric: cached tokens over the time spent
running the teacher and writing the arrays (`cache_seconds`). `wall s` is the whole `build_cache`
call, which also loads the teacher, reads the corpora and copies the cache into the run's artifacts.

Wall-clock numbers: run it on an otherwise idle machine. The load average is recorded with the
results so a noisy run shows.

    python bench/cache.py --threads 2 --json-out cache.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import kd
from kd.cache.build import CacheJob, build_cache, open_cache_run
from kd.cache.store import LAYERS, CachedTargets
from kd.data.batching import EncodedDataset, bucketed_batches
from kd.data.conll import write_conll
from kd.data.corpora import corpus_name, load_split, resolve_corpus_dir
from kd.data.vocab import build_vocabularies
from kd.tracking.backend import open_client
from kd.models.device import resolve_device
from kd.models.tagger import TaggerConfig
from kd.training.job_definition import build_tagger
from kd.training.loop import TrainingOptions, train
from kd.training.schedule import alternating_plan, supervised_loss, task_optimizers
from kd.training.tagger_job import TaggerJob, run_tagger_job

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = REPO.parent / "shared" / "datasets"
STUDENT_BATCH = 32
CACHE_SPLITS = ["train", "devel"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--corpora", default="NCBI-disease,BC5CDR,BioNLP13PC",
                        help="The teacher's corpora; the first is the student's.")
    parser.add_argument("--teacher-epochs", type=int, default=1)
    parser.add_argument("--max-sentences", type=int, default=2000,
                        help="Train sentences per corpus for the teacher (0: all); caching always uses all.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-batch-size", type=int, default=256, help="kd cache-logits --batch-size.")
    parser.add_argument("--repeats", type=int, default=3,
                        help="Cache logits this many times per row and keep the fastest (the machine may be busy).")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                        help="Also cache float16 logits with --precision bf16 (one more row).")
    parser.add_argument("--skip-all-layers", action="store_true",
                        help="Skip caching every layer (bytes per token of task/shared/marginals).")
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("--keep", type=Path, default=None, help="Keep the store and caches in this folder.")
    return parser.parse_args(argv)


def truncated_copies(data_dir: Path, corpora: list[str], max_sentences: int, dest: Path) -> dict[str, Any]:
    """Copies of the corpora with the first `max_sentences` train sentences (a quarter of that of
    devel and test), written as CoNLL; returns what was kept."""
    kept: dict[str, Any] = {}
    for corpus in corpora:
        source = resolve_corpus_dir(corpus, data_dir)
        target = dest / corpus_name(source)
        target.mkdir(parents=True, exist_ok=True)
        kept[target.name] = {}
        for split, limit in (("train", max_sentences), ("devel", max_sentences // 4), ("test", max_sentences // 4)):
            sentences = load_split(source, split)
            if max_sentences > 0:
                sentences = sentences[:max(limit, 1)]
            with open(target / f"{split}.tsv", "w") as handle:
                write_conll([s.tokens for s in sentences], [s.tags for s in sentences], handle)
            kept[target.name][split] = len(sentences)
    return kept


def timed(function, *args, **kwargs) -> tuple[Any, float]:
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started


def cache_once(client, uri: str, teacher: str, data_dir: Path, layers: list[str], dtype: str,
               batch_size: int, precision: str = "fp32") -> dict[str, Any]:
    job = CacheJob(teacher_runs=[teacher], splits=list(CACHE_SPLITS), layers=layers, dtype=dtype,
                   data_dir=str(data_dir), device="cpu", precision=precision, batch_size=batch_size,
                   experiment="bench-cache", run_name=f"{'+'.join(layers)}-{dtype}-{precision}")
    summary, wall = timed(build_cache, job, client, uri)
    metrics = summary.metrics
    return {"run_id": summary.run_id, "layers": layers, "dtype": dtype, "precision": precision, "wall_seconds": wall,
            "cache_seconds": metrics["cache_seconds"], "cached_tokens": int(metrics["cached_tokens"]),
            "tokens_per_second": metrics["tokens_per_second"],
            "bytes_per_token": {layer: metrics[f"bytes_per_token/{layer}"] for layer in layers},
            "widths": summary.manifest.widths}


def best_of(repeats: int, *args, **kwargs) -> dict[str, Any]:
    """The fastest of `repeats` cachings (each a separate cache run), with every repeat's rate."""
    measured = [cache_once(*args, **kwargs) for _ in range(max(repeats, 1))]
    best = min(measured, key=lambda m: m["cache_seconds"])
    return {**best, "repeats": len(measured), "tokens_per_second_all": [m["tokens_per_second"] for m in measured],
            "wall_seconds_all": [m["wall_seconds"] for m in measured]}


def drop_artifacts(client, run_id: str) -> None:
    """Frees the disk a large cache takes once it has been measured."""
    from urllib.parse import urlparse

    path = Path(urlparse(client.get_run(run_id).info.artifact_uri).path) / "cache"
    shutil.rmtree(path, ignore_errors=True)


def student_data(data_dir: Path, corpus: str):
    directory = resolve_corpus_dir(corpus, data_dir)
    task = corpus_name(directory)
    sentences = [s for split in CACHE_SPLITS for s in load_split(directory, split)]
    vocabularies = build_vocabularies({task: sentences})
    return task, sentences, vocabularies, EncodedDataset(sentences, vocabularies, task)


def iterate_cache(client, uri: str, run_id: str, task: str, sentences, dataset: EncodedDataset,
                  epochs: int = 3) -> dict[str, Any]:
    """Opening the cache for a student, then epochs of bucketed batches with their gathered logits."""
    started = time.perf_counter()
    reader, _ = open_cache_run(run_id, client, uri)
    opened = time.perf_counter()
    targets = CachedTargets(reader, task, CACHE_SPLITS, [s.tokens for s in sentences], ["logits"],
                            tags=[t for s in sentences for t in s.tags])
    ready = time.perf_counter()
    generator = np.random.default_rng(1)
    per_epoch = []
    for _ in range(epochs):
        batch_seconds = gather_seconds = 0.0
        batches = tokens = 0
        for ids in bucketed_batches(dataset.lengths, STUDENT_BATCH, generator):
            t0 = time.perf_counter()
            batch = dataset.batch(ids)
            t1 = time.perf_counter()
            gathered = targets.gather(batch.sentence_ids, batch.words.shape[1])
            t2 = time.perf_counter()
            assert gathered["logits"].shape[:2] == batch.words.shape
            batch_seconds += t1 - t0
            gather_seconds += t2 - t1
            batches += 1
            tokens += batch.num_tokens
        per_epoch.append({"batch_seconds": batch_seconds, "gather_seconds": gather_seconds, "batches": batches,
                          "tokens": tokens})
    return {"open_run_seconds": opened - started, "targets_seconds": ready - opened, "open_seconds": ready - started,
            "epochs": per_epoch,
            "gather_seconds_first": per_epoch[0]["gather_seconds"],
            "gather_seconds_median": statistics.median(e["gather_seconds"] for e in per_epoch),
            "batch_seconds_median": statistics.median(e["batch_seconds"] for e in per_epoch)}


def student_epoch(task: str, sentences, dataset: EncodedDataset, vocabularies) -> dict[str, Any]:
    """One epoch of a default-size single-task softmax model, trained the way `kd train` trains."""
    options = TrainingOptions(epochs=1, batch_size=STUDENT_BATCH, seed=1)
    model, _ = build_tagger(TaggerConfig(output="softmax"), vocabularies, seed=1)
    device = resolve_device("cpu")
    model.to(device)
    plan = alternating_plan({task: dataset}, STUDENT_BATCH, "uniform")
    result, seconds = timed(train, model, task_optimizers(model, options.learning_rate), plan, supervised_loss(model),
                            options, device)
    return {"seconds": seconds, "train_loss": result.state.history[-1]["train_loss"], "tokens": dataset.num_tokens,
            "parameters": model.num_parameters()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    corpora = [c.strip() for c in args.corpora.split(",") if c.strip()]
    load_before = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="kd-bench-cache-")) if args.keep is None else args.keep
    workdir.mkdir(parents=True, exist_ok=True)
    previous = Path.cwd()
    os.chdir(workdir)  # MLflow's default artifact root (./mlruns) and checkpoints go there
    try:
        uri = f"sqlite:///{workdir / 'mlflow.db'}"
        client = open_client(uri)

        print(f"[1/4] teacher: MTM on {', '.join(corpora)} (max {args.max_sentences} train sentences each, "
              f"{args.teacher_epochs} epoch(s), {args.threads} threads)", file=sys.stderr, flush=True)
        kept = truncated_copies(args.data_dir, corpora, args.max_sentences, workdir / "truncated")
        job = TaggerJob(corpora=list(kept), data_dir=str(workdir / "truncated"), model=TaggerConfig(),
                        training=TrainingOptions(epochs=args.teacher_epochs), device="cpu",
                        experiment="bench-cache", run_name="teacher")
        teacher, teacher_seconds = timed(run_tagger_job, job, client, workdir / "checkpoints")

        print("[2/4] caching logits (float16, float32) on the full train+devel splits", file=sys.stderr, flush=True)
        logits = {dtype: best_of(args.repeats, client, uri, teacher.run_id, args.data_dir, ["logits"], dtype,
                                 args.cache_batch_size) for dtype in ("float16", "float32")}
        if args.bf16:
            print("[2/4] caching logits (float16) with --precision bf16", file=sys.stderr, flush=True)
            logits["float16-bf16"] = best_of(args.repeats, client, uri, teacher.run_id, args.data_dir, ["logits"],
                                             "float16", args.cache_batch_size, precision="bf16")
        all_layers = {}
        if not args.skip_all_layers:
            print("[2/4] caching every layer (float16, float32)", file=sys.stderr, flush=True)
            for dtype in ("float16", "float32"):
                all_layers[dtype] = cache_once(client, uri, teacher.run_id, args.data_dir, list(LAYERS), dtype,
                                               args.cache_batch_size)
                drop_artifacts(client, all_layers[dtype]["run_id"])

        print(f"[3/4] student: iterating cached logits of {corpora[0]} train+devel", file=sys.stderr, flush=True)
        task, sentences, vocabularies, dataset = student_data(args.data_dir, corpora[0])
        iteration = {dtype: iterate_cache(client, uri, logits[dtype]["run_id"], task, sentences, dataset)
                     for dtype in ("float16", "float32")}

        print(f"[4/4] student: one training epoch on {corpora[0]} train+devel", file=sys.stderr, flush=True)
        epoch = student_epoch(task, sentences, dataset, vocabularies)
    finally:
        os.chdir(previous)
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)

    for dtype, measured in iteration.items():
        measured["overhead_percent"] = 100 * measured["gather_seconds_median"] / epoch["seconds"]
        measured["overhead_percent_with_open"] = 100 * (measured["gather_seconds_median"] + measured["open_seconds"]) \
            / epoch["seconds"]
    results = {
        "benchmark": "cache", "kd_version": kd.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                    "cpus": os.cpu_count(), "threads": args.threads, "load_average_before": load_before,
                    "load_average_after": os.getloadavg()},
        "command": " ".join(["python", "bench/cache.py", *(argv if argv is not None else sys.argv[1:])]),
        "teacher": {"run_id": teacher.run_id, "corpora": corpora, "sentences": kept, "epochs": args.teacher_epochs,
                    "seconds": teacher_seconds, "test_f1": teacher.metrics.get("test_f1")},
        "cache_logits": logits, "cache_all_layers": all_layers, "student_iteration": iteration,
        "student_epoch": epoch,
        "targets": {"logits_tokens_per_second": 20000, "iteration_overhead_percent": 5},
    }
    print_table(results)
    line = json.dumps(results, sort_keys=True)
    print(line)
    if args.json_out:
        args.json_out.write_text(line + "\n")
    return results


def print_table(results: dict[str, Any]) -> None:
    machine, teacher = results["machine"], results["teacher"]
    print(f"kd {results['kd_version']}, torch {machine['torch']}, {machine['threads']} threads of {machine['cpus']} CPUs; "
          f"load average before {machine['load_average_before'][0]:.2f}, after {machine['load_average_after'][0]:.2f}")
    print(f"teacher: MTM on {', '.join(teacher['corpora'])}, {teacher['epochs']} epoch(s) on truncated copies, "
          f"{teacher['seconds']:.1f} s, test F1 {teacher['test_f1']:.3f}")
    print()
    print("caching (full train+devel; logits rows: fastest of the repeats, all repeats' tokens/s in brackets)")
    print(f"  {'layers':<28} {'dtype':<8} {'precision':<9} {'tokens':>8} {'cache s':>8} {'tokens/s (kd)':>14} "
          f"{'wall s':>7}")
    for group in (results["cache_logits"], results["cache_all_layers"]):
        for measured in group.values():
            print(f"  {','.join(measured['layers']):<28} {measured['dtype']:<8} {measured['precision']:<9} "
                  f"{measured['cached_tokens']:>8} "
                  f"{measured['cache_seconds']:>8.2f} {measured['tokens_per_second']:>14,.0f} "
                  f"{measured['wall_seconds']:>7.2f}"
                  + (f"  [{', '.join(f'{r:,.0f}' for r in measured['tokens_per_second_all'])}]"
                     if "tokens_per_second_all" in measured else ""))
    print()
    print("bytes per token")
    print(f"  {'layer':<11} {'float16':>9} {'float32':>9}")
    source = results["cache_all_layers"] or results["cache_logits"]
    for layer in next(iter(source.values()))["bytes_per_token"]:
        print(f"  {layer:<11} " + " ".join(f"{source[d]['bytes_per_token'][layer]:>9.2f}" for d in ("float16", "float32")
                                           if d in source))
    print()
    epoch = results["student_epoch"]
    print(f"student epoch (default-size softmax STM, {epoch['tokens']} tokens): {epoch['seconds']:.2f} s")
    print(f"  {'cache':<8} {'open s':>7} {'gather s (1st)':>15} {'gather s (median)':>18} {'batches s':>10} "
          f"{'overhead %':>11} {'with open %':>12}")
    for dtype, measured in results["student_iteration"].items():
        print(f"  {dtype:<8} {measured['open_seconds']:>7.3f} {measured['gather_seconds_first']:>15.3f} "
              f"{measured['gather_seconds_median']:>18.3f} {measured['batch_seconds_median']:>10.3f} "
              f"{measured['overhead_percent']:>11.2f} {measured['overhead_percent_with_open']:>12.2f}")
    print()
    rate = results["cache_logits"]["float16"]["tokens_per_second"]
    overhead = results["student_iteration"]["float16"]["overhead_percent"]
    print(f"targets: caching logits (fp32, float16) >= 20,000 tokens/s: {rate:,.0f} "
          f"({'met' if rate >= 20000 else 'NOT met'}); "
          f"cached-logit iteration < 5% of a student epoch: {overhead:.2f}% ({'met' if overhead < 5 else 'NOT met'})")


if __name__ == "__main__":
    main()

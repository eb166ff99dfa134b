"""Prediction throughput of a student by runtime: torch fp32, torch bf16 and ONNX Runtime (the
`kd export --format onnx` graph, CRF Viterbi in numpy), at 1 and 2 threads, in one process.

On the test split of one corpus (default NCBI-disease from ../shared/datasets), a default-size
tagger (its initial weights, or a trained one with --model FOLDER: speed does not depend on the
weights) tags the whole split from token lists to tag strings, as `kd predict` does
(SavedTagger.tag / OnnxTagger.tag, encoding included). Settings run round-robin, --calls rounds
after one warm-up round, so that a load that comes and goes falls on all of them alike; the median
is reported, with the tags compared with torch fp32's (ONNX must match exactly; bf16 may differ).

    python bench/predict_runtimes.py [--data-dir ../shared/datasets] [--corpus NCBI-disease]
        [--output crf] [--model FOLDER] [--threads 1,2] [--calls 3] [--onnx-budgets 1024,4096]

ONNX Runtime runs once per batch budget of --onnx-budgets (padded words per batch; torch uses kd's
default, PREDICT_BATCH_TOKENS).
"""
from __future__ import annotations

import argparse
import functools
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from kd.data.vocab import build_vocabularies
from kd.models.inference import SavedTagger
from kd.models.io import SavedModel, load_model
from kd.models.onnx_export import export_onnx
from kd.models.onnx_runtime import OnnxTagger
from kd.models.tagger import TaggerConfig
from kd.training.job_definition import build_tagger, load_task


def student(args: argparse.Namespace, data) -> SavedModel:
    if args.model:
        return load_model(args.model)
    vocabularies = build_vocabularies({data.name: data.splits["train"]})
    model, _ = build_tagger(TaggerConfig(output=args.output), vocabularies, seed=1)
    return SavedModel(model.eval(), vocabularies)


def student_arguments(description: str) -> argparse.ArgumentParser:
    """The options that choose the corpus and the student (shared with bench/raw_text_overhead.py)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets")
    parser.add_argument("--corpus", default="NCBI-disease")
    parser.add_argument("--output", default="crf", choices=["softmax", "crf"])
    parser.add_argument("--model", type=Path, default=None, help="A saved single-task tagger folder (tagger.json).")
    return parser


def main() -> None:
    parser = student_arguments(__doc__)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--onnx-budgets", default="1024,4096")
    args = parser.parse_args()

    data = load_task(args.corpus, args.data_dir, ["train", "test"])
    sentences = [list(s.tokens) for s in data.splits["test"]]
    words = sum(len(s) for s in sentences)
    saved = student(args, data)
    task = saved.model.task_names[0]
    with tempfile.TemporaryDirectory() as folder:
        onnx_file = export_onnx(saved, task, Path(folder) / "student.onnx")
        settings = {}
        for threads in (int(t) for t in args.threads.split(",")):
            for precision in ("fp32", "bf16"):
                tagger = SavedTagger(saved, "cpu", task, precision)
                settings[(f"torch {precision}", threads)] = tagger.tag
            onnx_tagger = OnnxTagger(onnx_file, threads=threads)
            for budget in (int(b) for b in args.onnx_budgets.split(",")):
                settings[(f"onnxruntime b{budget}", threads)] = functools.partial(onnx_tagger.tag, batch_tokens=budget)
        seconds = {key: [] for key in settings}
        tags = {}
        for round_number in range(args.calls + 1):
            for (runtime, threads), tag in settings.items():
                torch.set_num_threads(threads)
                started = time.perf_counter()
                tags[runtime, threads] = tag(sentences)
                if round_number:  # the first round warms up (kernels, allocations)
                    seconds[runtime, threads].append(time.perf_counter() - started)
    rows = []
    for (runtime, threads), times in seconds.items():
        reference = [t for s in tags["torch fp32", threads] for t in s]
        differ = sum(a != b for a, b in zip(reference, (t for s in tags[runtime, threads] for t in s)))
        median = statistics.median(times)
        base = statistics.median(seconds["torch fp32", threads])
        rows.append({"runtime": runtime, "threads": threads, "seconds": median, "words_per_s": words / median,
                     "x_torch_fp32": base / median, "tags_differ": differ})
        print(f"{runtime:18s} {threads} thread(s) {words / median:9.0f} words/s  x{base / median:5.2f} of torch fp32  "
              f"{differ} of {words} tags differ", flush=True)
    print(json.dumps({"corpus": data.name, "test_words": words, "output": saved.model.config.output,
                      "trained": bool(args.model), "calls": args.calls, "rows": rows}))


if __name__ == "__main__":
    main()

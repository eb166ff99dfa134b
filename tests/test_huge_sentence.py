"""One huge line among ordinary sentences in `--unlabelled` text: batches stay under the token budget,
so caching and distilling stay under 2 GB of memory (before the budget: 2.4 GB asked for in
cache-logits, 19 GB in distill, and the kernel killed it)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SMALL_MODEL, make_corpora, subprocess_env

pytestmark = pytest.mark.slow
HUGE = 200_000  # tokens in the one huge line
LIMIT_KB = 2 * 1024 * 1024  # 2 GB, as ru_maxrss counts it on Linux (KiB)

# Runs a command and prints the peak resident memory of its process tree (this wrapper's children only).
MEASURE = ("import json, resource, subprocess, sys; done = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
           "print(json.dumps({'rc': done.returncode, 'out': done.stdout[-2000:], 'err': done.stderr[-2000:], "
           "'peak_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")


def measured(command: list[str], cwd: Path, uri: str) -> dict:
    result = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, "-m", "kd", *command], cwd=cwd,
                            env=subprocess_env(uri), capture_output=True, text=True, timeout=900)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["rc"] == 0, report["err"]
    return {**report, "result": json.loads(report["out"].strip().splitlines()[-1])}


def test_a_200000_token_line_stays_under_2_gb_in_cache_logits_and_distill(tmp_path: Path):
    data_dir = make_corpora(tmp_path / "corpora")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ordinary = [line for line in (data_dir / "other" / "train.tsv").read_text().split("\n\n") if line.strip()]
    text = tmp_path / "huge.txt"
    sentences = [" ".join(row.split("\t")[0] for row in block.splitlines()) for block in ordinary[:255]]
    # 5,000 distinct forms, as a runaway table or sequence dump would have.
    sentences.insert(100, " ".join(f"w{i % 5000}" for i in range(HUGE)))
    text.write_text("\n".join(sentences) + "\n")
    common = ["--data-dir", str(data_dir), "--threads", "1", "--json"]
    teacher = measured(["train", "--task", "tiny", "--epochs", "1", *SMALL_MODEL, *common], tmp_path, uri)
    cache = measured(["cache-logits", "--teacher", teacher["result"]["run_id"], "--splits", "train", "--unlabelled",
                      str(text), "--batch-size", "256", *common], tmp_path, uri)
    print(f"peak RSS: cache-logits {cache['peak_kb'] / 1024:.0f} MiB")
    assert cache["peak_kb"] < LIMIT_KB, cache["peak_kb"]
    assert cache["result"]["cached_tokens"] >= HUGE
    student = measured(["distill", "--task", "tiny", "--cache", cache["result"]["run_id"], "--unlabelled", str(text),
                        "--train-splits", "train", "--epochs", "1", "--batch-size", "32", *SMALL_MODEL, *common],
                       tmp_path, uri)
    print(f"peak RSS: distill {student['peak_kb'] / 1024:.0f} MiB")
    assert student["peak_kb"] < LIMIT_KB, student["peak_kb"]

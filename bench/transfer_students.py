"""Parts 1-3 of bench/transfer.py: students with transfer text, through the library calls the CLI makes,
in a throwaway MLflow store. Per seed, on `--train-sentences` random training sentences of each corpus
(test whole, devel whole or its first `--devel-sentences`; the same sample for every seed): a BiLSTM MTM on `--corpora`, the STM of
`--student`, and students (kd's default `kl` loss) given:

1. leakage: the student corpus's own test sentences as unlabelled text (allow_eval_overlap), against
   clean text of the same size (the corpus's left-out training sentences through `kd data text`);
2. cost: the clean left-out text (`--text-sentences` of it) with unlabelled_ratio 0.5, 1, 2 and the
   whole file every epoch; epoch time is the mean wall time of an epoch (training and the devel pass);
3. elsewhere: text built by `kd data text --from-corpora` (the training splits of `--text-corpora` other
   than the student's, the student corpus's evaluation sentences removed, `--text-sentences` sampled),
   and the same pooled with the student corpus's left-out training sentences (with
   `--student-train-sentences 0`, the student's whole training split is labelled and `pooled` is every
   text corpus's training split, the student's included).

Runs of single seeds (`--seeds 1`, `--seeds 2`, ... in parallel processes, same data: the samples and
texts are seeded) are merged by `python bench/transfer.py summary seed1.json seed2.json ...`.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from transformer_teacher import subsample

from kd.cache.build import CacheJob, build_cache
from kd.data.corpora import load_split
from kd.data.text.builder import TextJob, build_text
from kd.tracking.backend import open_client
from kd.training.distillation import DistillOptions
from kd.models.tagger import TaggerConfig
from kd.training.loop import TrainingHooks, TrainingOptions
from kd.training.tagger_job import TaggerJob, run_tagger_job

RATIOS = (0.5, 1.0, 2.0)


def prepare_texts(root: Path, data: Path, args) -> dict[str, Path]:
    """The unlabelled files the parts use: name -> path (all but `test` built by kd data text, so clean).
    When the student corpus's whole training split is labelled there is no left-out text: `pooled` is then
    the training splits of every text corpus, the student's own included (its labelled sentences as text)."""
    student = args.student
    left_out = root / student / "train-left-out.txt"
    own = [left_out] if left_out.is_file() else []
    texts: dict[str, Path] = {}
    (root / "texts").mkdir(parents=True, exist_ok=True)
    test = load_split(data / student, "test")
    target = [data / student]

    def build(name: str, **kwargs) -> None:
        texts[name] = root / "texts" / f"{name}.txt"
        manifest = build_text(TextJob(out=texts[name], for_corpora=target, seed=0, **kwargs))
        print(json.dumps({"text": name, "sentences": manifest["sentences"], "removed": manifest["removed"]}),
              flush=True)

    needed = {text for text, _ in students_of(args.parts).values()}
    if "test" in needed:
        texts["test"] = root / "texts" / "test.txt"
        texts["test"].write_text("".join(" ".join(s.tokens) + "\n" for s in test))
    if needed & {"clean-same-size", "clean"} and not own:
        sys.exit("parts leakage and cost need left-out training sentences: lower --student-train-sentences")
    if "clean-same-size" in needed:
        build("clean-same-size", files=own, max_sentences=len(test))
    if "clean" in needed:
        build("clean", files=own, max_sentences=args.text_sentences)
    others = [Path(args.data_dir) / c for c in args.text_corpora if c != student]
    if "elsewhere" in needed:
        build("elsewhere", from_corpora=others, max_sentences=args.text_sentences)
    if "pooled" in needed:
        pooled = others if own else [Path(args.data_dir) / c for c in args.text_corpora]
        build("pooled", files=own, from_corpora=pooled, max_sentences=args.text_sentences)
    return texts


def students_of(parts: list[str]) -> dict[str, tuple[str, float | None]]:
    """student name -> (text, ratio)."""
    runs: dict[str, tuple[str, float | None]] = {}
    if "leakage" in parts:
        runs.update({"test-as-text": ("test", None), "clean-same-size": ("clean-same-size", None)})
    if "cost" in parts:
        runs.update({f"clean-r{r:g}": ("clean", r) for r in RATIOS})
        runs["clean-whole"] = ("clean", None)
    if "elsewhere" in parts:
        runs.update({"elsewhere": ("elsewhere", None), "pooled": ("pooled", None)})
    return runs


def one_seed(client, data: Path, texts: dict[str, Path], args, seed: int) -> dict[str, dict]:
    common = dict(train_splits=["train"], eval_split="test", experiment="bench", data_dir=str(data))
    checkpoints = data.parent / "checkpoints"

    def run(corpora: list[str], epochs: int, distill: DistillOptions | None = None) -> dict:
        # An epoch's training time: from the end of the previous epoch (its devel pass included) to the
        # epoch's last batch; the first epoch (setup) is left out of the median.
        started, ends, last_batch, tokens = time.perf_counter(), {}, {}, {}

        class EpochTimes(TrainingHooks):
            def on_batch(self, epoch: int, batch_tokens: int, terms) -> None:
                last_batch[epoch] = time.perf_counter()
                tokens[epoch] = tokens.get(epoch, 0) + batch_tokens

            def on_epoch(self, epoch: int, metrics: dict) -> bool:
                ends[epoch] = time.perf_counter()
                return False

            def warn(self, message: str) -> None:
                pass

        summary = run_tagger_job(TaggerJob(corpora=corpora, distill=distill, model=TaggerConfig(**args.model),
                                           training=TrainingOptions(epochs=epochs, seed=seed, **args.training),
                                           **common),
                                 client, checkpoints, hooks=EpochTimes())
        epoch_seconds = [last_batch[e] - ends[e - 1] for e in range(2, epochs + 1)]
        return {**summary.metrics, "run_id": summary.run_id, "seconds": time.perf_counter() - started,
                "epoch_seconds": statistics.median(epoch_seconds) if epoch_seconds else float("nan"),
                "epoch_tokens": statistics.mean(tokens.values())}

    teacher = run(args.corpora, args.teacher_epochs)
    results = {"teacher": {**teacher, "test_f1": teacher[f"{args.student}/test_f1"]},
               "stm": run([args.student], args.student_epochs)}
    caches: dict[str, str] = {}
    for name, (text, ratio) in students_of(args.parts).items():
        if text not in caches:
            caches[text] = build_cache(CacheJob(teacher_runs=[teacher["run_id"]], tasks=[args.student],
                                                splits=["train"], data_dir=str(data), experiment="bench",
                                                unlabelled=str(texts[text]), allow_eval_overlap=text == "test"),
                                       client, client.tracking_uri).run_id
        results[name] = run([args.student], args.student_epochs, DistillOptions(
            loss="kl", cache_run=caches[text], unlabelled=str(texts[text]), unlabelled_ratio=ratio,
            allow_eval_overlap=text == "test"))
    return results


def cut_devel(path: Path, sentences: int) -> None:
    """The first `sentences` sentences of a devel split (it only picks the best epoch: a smaller one
    costs less per epoch)."""
    blocks = path.read_text().split("\n\n")
    path.write_text("\n\n".join(block for block in blocks[:sentences] if block.strip()) + "\n\n")


def summarise(per_seed: list[dict[str, dict]]) -> dict[str, dict]:
    table = {}
    for name in per_seed[0]:
        f1 = [100 * seed[name]["test_f1"] for seed in per_seed]
        table[name] = {"test_f1_mean": statistics.mean(f1), "test_f1": f1,
                       "epoch_seconds_mean": statistics.mean(seed[name]["epoch_seconds"] for seed in per_seed),
                       "epoch_tokens": statistics.mean(seed[name]["epoch_tokens"] for seed in per_seed),
                       "seconds_mean": statistics.mean(seed[name]["seconds"] for seed in per_seed)}
    return table


def students(args) -> dict:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    args.model = json.loads(args.model) if isinstance(args.model, str) else args.model
    args.training = json.loads(args.training) if isinstance(args.training, str) else args.training
    if args.student not in args.corpora:
        sys.exit("--student must be one of --corpora")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="kd-bench-transfer-") as root:
        root = Path(root)
        (root / "data").mkdir()
        for corpus in args.corpora:
            target = root / corpus / "data" / corpus
            sentences = args.train_sentences
            if corpus == args.student and args.student_train_sentences is not None:
                sentences = args.student_train_sentences or 10**9  # 0: the whole split
            subsample(Path(args.data_dir) / corpus, target, sentences)
            if args.devel_sentences:
                cut_devel(target / "devel.tsv", args.devel_sentences)
            (root / "data" / corpus).symlink_to(target)
        texts = prepare_texts(root, root / "data", args)
        client = open_client(f"sqlite:///{root / 'mlflow.db'}")
        per_seed = []
        for seed in [int(s) for s in args.seeds.split(",")]:
            per_seed.append(one_seed(client, root / "data", texts, args, seed))
            print(json.dumps({"seed": seed, **{name: {k: v for k, v in run.items() if k in (
                "test_f1", "seconds", "epoch_seconds", "epoch_tokens", "best_epoch")} for name, run in per_seed[-1].items()}}),
                flush=True)
    return {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "table": summarise(per_seed),
            "per_seed": per_seed}

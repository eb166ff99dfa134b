"""Does distillation make students better? The published Tables 1 and 2, scaled to run on 2 CPU cores.

On several corpora of ../shared/datasets, each cut to its first --max-train / --max-devel / --max-test
sentences, this trains for every seed:

* stm: the single-task model of each corpus (hard labels);
* mtm: the multi-task teacher over all corpora, scored per corpus (a column of its own);
* students (one column per --student spec): a single-task model of each corpus distilled from
  that seed's MTM, its targets read from a real kd cache written for the student's sentences;
* ensemble students (--ensemble-student specs): the same, from the average of every seed's MTM;
* with --copy-check, a single-task teacher on one corpus and an alpha = 0 student of it.

Every model trains on train, keeps its best devel epoch (devel held out for all of them alike) and is
scored on test (strict IOB2 entity F1, kd's metric). It calls the library the way `kd train` and
`kd distill` do (`train`, `alternating_plan`, `task_optimizers`, `distillation_loss`,
`CachedTargetSource`), without MLflow, so figures measure the method, not tracking. Results go
to --work/results.jsonl, one line per (model, corpus, seed); a run with the same --work skips what is
there, so a killed run continues. The report: per-corpus means, the average, Friedman's p over corpora,
and how often each model beats the STM.

    python bench/science.py [--data-dir ../shared/datasets] [--corpora A,B,...] [--seeds 1,2,3]
        [--epochs 10] [--mtm-epochs 10] [--student logits:alpha=0.5] [--ensemble-student ...]
        [--mtm-optimizer shared|per-task] [--models stm,mtm] [--copy-check] [--work bench-science]
        [--also OTHER_WORK] [--report-only] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import friedmanchisquare

from kd.cache.store import CacheReader, CacheWriter, Manifest
from kd.cache.teachers import BiLSTMTeacher, layer_widths, teacher_outputs_for_sentences
from kd.data.batching import EncodedDataset
from kd.data.corpora import load_split, resolve_corpus_dir
from kd.data.vocab import Vocabularies, build_vocabularies
from kd.models.io import load_model, save_model
from kd.cache.knowledge import CachedTargetSource
from kd.training.distillation import DistillOptions, StudentModel, distillation_loss
from kd.models.predict import predict_tags
from kd.training.evaluate import entity_scores
from kd.models.tagger import TaggerConfig
from kd.training.job_definition import build_tagger
from kd.training.loop import Trainable, TrainingOptions, train
from kd.option_schema import OPTIONS
from kd.training.schedule import alternating_plan, supervised_loss, task_optimizers

CPU = torch.device("cpu")
DEFAULT_CORPORA = "NCBI-disease,BC5CDR,AnatEM,BC2GM,BioNLP09,BioNLP13PC"


def load_scaled(corpora: list[str], data_dir: Path, limits: dict[str, int]) -> dict[str, dict[str, list]]:
    """{corpus: {split: its first `limits[split]` sentences}}."""
    return {name: {split: load_split(resolve_corpus_dir(name, data_dir), split)[:limit]
                   for split, limit in limits.items()} for name in corpora}


def spec_options(spec: str) -> DistillOptions:
    """`loss:alpha=0.5,tau=2` -> DistillOptions (cache_run is a placeholder: the bench passes targets itself)."""
    loss, _, rest = spec.partition(":")
    values = {key: float(value) for key, value in (item.split("=") for item in rest.split(",") if item)}
    return DistillOptions(loss=loss, cache_run="bench", **values)


def devel_scorer(model, vocabularies: Vocabularies, devel: dict[str, list]):
    datasets = {task: EncodedDataset(sentences, vocabularies, task) for task, sentences in devel.items()}

    def score(epoch: int) -> dict[str, float]:
        f1 = {task: entity_scores([s.tags for s in d.sentences], predict_tags(model, d, vocabularies, task, CPU)).f1
              for task, d in datasets.items()}
        return {"devel_f1": float(np.mean(list(f1.values()))), **{f"devel_f1/{t}": v for t, v in f1.items()}}
    return score


def fit(train_sets: dict[str, list], devel_sets: dict[str, list], seed: int, epochs: int, model_options: TaggerConfig,
        *, optimizer: str = "shared", distill: DistillOptions | None = None,
        teachers: list[BiLSTMTeacher] | None = None, cache_dir: Path | None = None) -> tuple:
    """Trains one tagger (STM, MTM or student) with best-devel-epoch selection; returns it, its
    vocabularies and the per-epoch history."""
    vocabularies = build_vocabularies(train_sets)
    (task,) = train_sets if distill else (None,)
    if distill:
        vocabularies.tags = {task: list(teachers[0].vocabularies.tags[task])}
    model, _ = build_tagger(model_options, vocabularies, seed)
    trained, loss = model, supervised_loss(model)
    optimizers = task_optimizers(model, 1e-3, optimizer)
    if distill:
        reader = write_cache(teachers, task, train_sets[task], distill.layers, cache_dir)
        trained = StudentModel(model, layer_widths(teachers[0], task), distill.layers)
        source = CachedTargetSource(reader, task, ["train"], train_sets[task], distill.layers, CPU)
        loss = distillation_loss(trained, distill, source)
        if len(trained.projections):
            next(iter(optimizers.values())).add_param_group({"params": list(trained.projections.parameters())})
    datasets = {t: EncodedDataset(s, vocabularies, t) for t, s in train_sets.items()}
    result = train(Trainable(trained, optimizers, alternating_plan(datasets, 32, "uniform"), loss),
                   TrainingOptions(epochs=epochs, seed=seed), CPU,
                   evaluate_epoch=devel_scorer(model, vocabularies, devel_sets), selection_metric="devel_f1")
    return model, vocabularies, result.state


def write_cache(teachers: list[BiLSTMTeacher], task: str, sentences: list, layers, directory: Path) -> CacheReader:
    """The teachers' (averaged) outputs for the student's training sentences, as `kd cache-logits` writes them."""
    if not (directory / "manifest.json").exists():
        rows = teacher_outputs_for_sentences(teachers, task, sentences, layers, CPU)
        writer = CacheWriter(directory, "float16")
        entry = writer.write_split(task, "train", [s.tokens for s in sentences], rows)
        widths = layer_widths(teachers[0], task)
        writer.commit(Manifest(teacher_runs=[t.run_id for t in teachers], ensemble="seeds" if len(teachers) > 1 else "single",
                               teacher_outputs=[t.output for t in teachers], tasks={task: teachers[0].vocabularies.tags[task]},
                               splits={task: {"train": entry}}, layers=list(layers), dtype="float16",
                               widths={task: {layer: widths[layer] for layer in layers}}))
    return CacheReader(directory)


def test_f1(model, vocabularies: Vocabularies, task: str, sentences: list) -> float:
    dataset = EncodedDataset(sentences, vocabularies, task)
    return 100 * entity_scores([s.tags for s in sentences], predict_tags(model, dataset, vocabularies, task, CPU)).f1


class Results:
    """results.jsonl under the work folder: one line per (model, corpus, seed), appended as it finishes."""

    def __init__(self, work: Path) -> None:
        self.path = work / "results.jsonl"
        self.rows = [json.loads(line) for line in self.path.read_text().splitlines()] if self.path.exists() else []

    def done(self, model: str, corpus: str, seed: int) -> bool:
        return any(r["model"] == model and r["corpus"] == corpus and r["seed"] == seed for r in self.rows)

    def add(self, **row) -> None:
        self.rows.append(row)
        with self.path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(f"{row['model']:>28} {row['corpus']:>14} seed {row['seed']}: test F1 {row['test_f1']:6.2f} "
              f"(best epoch {row['best_epoch']}, {row['seconds']:.0f} s)", flush=True)


def record(results: Results, name: str, corpus: str, seed: int, model, vocabularies, state, test, started: float,
           task: str | None = None) -> None:
    task = task or corpus
    curve = [h.get(f"devel_f1/{task}", h.get("devel_f1")) for h in state.history]
    terms = {k: [round(h[k], 4) for h in state.history] for k in state.history[0] if k.startswith("train_")}
    results.add(model=name, corpus=corpus, seed=seed, test_f1=test_f1(model, vocabularies, task, test),
                best_epoch=state.best_epoch, devel_curve=[round(100 * v, 2) for v in curve], terms=terms,
                seconds=time.perf_counter() - started)


def mtm_for_seed(data, seed: int, args, options: TaggerConfig, results: Results) -> BiLSTMTeacher:
    """The seed's MTM, trained once and saved under the work folder; its per-corpus test F1 is the mtm column."""
    folder = args.work / f"mtm-seed{seed}"
    if not (folder / "tagger.json").exists():
        started = time.perf_counter()
        model, vocabularies, state = fit({c: d["train"] for c, d in data.items()}, {c: d["devel"] for c, d in data.items()},
                                         seed, args.mtm_epochs, options, optimizer=args.mtm_optimizer)
        save_model(model, vocabularies, folder)
        name = "mtm" if args.mtm_optimizer == "shared" else f"mtm[{args.mtm_optimizer}]"
        for corpus in data:
            record(results, name, corpus, seed, model, vocabularies, state, data[corpus]["test"], started)
    saved = load_model(folder)
    return BiLSTMTeacher(run_id=f"mtm-seed{seed}", model=saved.model, vocabularies=saved.vocabularies,
                         corpora=list(data), data_dir=None)


def run_students(data, seed: int, specs: list[str], teachers: list[BiLSTMTeacher], prefix: str, args, options, results) -> None:
    for spec in specs:
        name = f"{prefix}[{spec}]"
        for corpus, splits in data.items():
            if results.done(name, corpus, seed):
                continue
            started = time.perf_counter()
            distill = spec_options(spec)
            cache = args.work / "caches" / f"{'+'.join(t.run_id for t in teachers)}-{corpus}-{'-'.join(distill.layers)}"
            model, vocabularies, state = fit({corpus: splits["train"]}, {corpus: splits["devel"]}, seed, args.epochs,
                                             options, distill=distill, teachers=teachers, cache_dir=cache)
            record(results, name, corpus, seed, model, vocabularies, state, splits["test"], started)


def run_all(data, args, results: Results) -> None:
    options = TaggerConfig()
    for seed in args.seeds:
        for corpus, splits in data.items():
            if "stm" in args.models and not results.done("stm", corpus, seed):
                started = time.perf_counter()
                model, vocabularies, state = fit({corpus: splits["train"]}, {corpus: splits["devel"]}, seed,
                                                 args.epochs, options)
                record(results, "stm", corpus, seed, model, vocabularies, state, splits["test"], started)
    if "mtm" not in args.models:
        return
    teachers = {seed: mtm_for_seed(data, seed, args, options, results) for seed in args.teacher_seeds}
    for seed in args.seeds:
        if args.student:
            run_students(data, seed, args.student, [teachers[seed]], "sm", args, options, results)
        if args.ensemble_student:
            run_students(data, seed, args.ensemble_student, list(teachers.values()), "ens-sm", args, options, results)


def baseline(model: str) -> str:
    """The single-task model a column is compared with: the copy check's STM of the same epochs, else `stm`."""
    if model.startswith("copy-sm@"):
        return f"copy-stm@{model[len('copy-sm@'):].split('[')[0]}"
    return "stm"


def labelled(rows: list[dict], own: list[dict], folder: Path) -> list[dict]:
    """Rows of an --also folder; a model name the report already has (e.g. `stm` at other epochs) gets the
    folder's name, so the two are separate columns and `stm` stays this run's baseline."""
    taken = {r["model"] for r in own}
    return [{**r, "model": f"{r['model']}@{folder.name}"} if r["model"] in taken else r for r in rows]


def report(rows: list[dict], corpora: list[str]) -> None:
    models = list(dict.fromkeys(r["model"] for r in rows if r["corpus"] in corpora))
    means = {m: {c: [r["test_f1"] for r in rows if r["model"] == m and r["corpus"] == c] for c in corpora} for m in models}
    complete = [m for m in models if all(means[m][c] for c in corpora)]
    print(f"\n{'model':>34} " + " ".join(f"{c[:11]:>11}" for c in corpora) + f" {'average':>8}  seeds")
    for m in complete:
        cells = [statistics.mean(means[m][c]) for c in corpora]
        seeds = sorted({len(means[m][c]) for c in corpora})
        print(f"{m:>34} " + " ".join(f"{v:11.2f}" for v in cells) + f" {statistics.mean(cells):8.2f}  {seeds}")
    for m in complete:
        base = baseline(m)
        if base in complete and base != m:
            signs = ["+" if statistics.mean(means[m][c]) >= statistics.mean(means[base][c]) else "-" for c in corpora]
            print(f"{m} >= {base} on {signs.count('+')} of {len(corpora)} corpora ({' '.join(signs)})")
    if len(complete) >= 3 and len(corpora) >= 2:
        p = friedmanchisquare(*[[statistics.mean(means[m][c]) for c in corpora] for m in complete]).pvalue
        print(f"Friedman over {len(corpora)} corpora, {len(complete)} models: p = {p:.4f}")


def logit_statistics(work: Path) -> None:
    """Why a logits MSE term can swamp the label term: the size of the teachers' cached logits. Per token:
    the spread of the logits over tags (std), the gap between the top two, and the MSE a student whose
    logits are all 0 (roughly, a fresh one) starts from; CE of a uniform student is ln(tags) per token."""
    print(f"\n{'cache':>48} {'tokens':>8} {'mean':>7} {'std':>6} {'top-2 gap':>9} {'MSE at 0':>8} {'CE unif.':>8}")
    for manifest in sorted(work.glob("caches/*/manifest.json")):
        reader = CacheReader(manifest.parent)
        for task in reader.manifest.tasks:
            logits = np.asarray(reader.split(task, "train").layers["logits"], dtype=np.float32)
            top = np.sort(logits, axis=1)
            print(f"{manifest.parent.name[:48]:>48} {len(logits):8d} {logits.mean():7.2f} {logits.std(axis=1).mean():6.2f} "
                  f"{(top[:, -1] - top[:, -2]).mean():9.2f} {(logits ** 2).mean():8.2f} {np.log(logits.shape[1]):8.2f}")


def copy_check(args, results: Results) -> None:
    """A single-task teacher on one corpus (full splits, seed 1, --copy-teacher-epochs), then for each seed an
    STM and the --copy-student students of it (seed + 1, so none shares the teacher's initialisation),
    --copy-epochs epochs each."""
    corpus = args.copy_corpus
    directory = resolve_corpus_dir(corpus, args.data_dir)
    splits = {split: load_split(directory, split) for split in ("train", "devel", "test")}
    options = TaggerConfig()
    folder = args.work / f"copy-teacher-{corpus}"
    if not (folder / "tagger.json").exists():
        started = time.perf_counter()
        model, vocabularies, state = fit({corpus: splits["train"]}, {corpus: splits["devel"]}, 1,
                                         args.copy_teacher_epochs, options)
        save_model(model, vocabularies, folder)
        record(results, "copy-teacher", corpus, 1, model, vocabularies, state, splits["test"], started)
    saved = load_model(folder)
    teacher = BiLSTMTeacher("copy-teacher", saved.model, saved.vocabularies, [corpus], None)
    epochs = args.copy_epochs
    for seed in args.seeds:
        if not results.done(f"copy-stm@{epochs}", corpus, seed):
            started = time.perf_counter()
            model, vocabularies, state = fit({corpus: splits["train"]}, {corpus: splits["devel"]}, seed + 1,
                                             args.copy_epochs, options)
            record(results, f"copy-stm@{epochs}", corpus, seed, model, vocabularies, state, splits["test"], started)
        for spec in args.copy_student:
            name = f"copy-sm@{epochs}[{spec}]"
            if results.done(name, corpus, seed):
                continue
            started = time.perf_counter()
            distill = spec_options(spec)
            model, vocabularies, state = fit({corpus: splits["train"]}, {corpus: splits["devel"]}, seed + 1,
                                             args.copy_epochs, options, distill=distill, teachers=[teacher],
                                             cache_dir=args.work / "caches" / f"copy-{corpus}-{'-'.join(distill.layers)}")
            record(results, name, corpus, seed, model, vocabularies, state, splits["test"], started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets")
    parser.add_argument("--corpora", default=DEFAULT_CORPORA)
    parser.add_argument("--max-train", type=int, default=1000)
    parser.add_argument("--max-devel", type=int, default=300)
    parser.add_argument("--max-test", type=int, default=800)
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--teacher-seeds", default=None, help="MTM seeds (default: --seeds)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--mtm-epochs", type=int, default=10)
    parser.add_argument("--mtm-optimizer", choices=OPTIONS["optimizer_state"].choices, default="shared")
    parser.add_argument("--models", default="stm,mtm", help="train these (students need mtm)")
    parser.add_argument("--student", action="append", default=[], help="e.g. logits:alpha=0.5 (repeatable)")
    parser.add_argument("--ensemble-student", action="append", default=[])
    parser.add_argument("--copy-check", action="store_true")
    parser.add_argument("--copy-corpus", default="NCBI-disease")
    parser.add_argument("--copy-teacher-epochs", type=int, default=15)
    parser.add_argument("--copy-epochs", type=int, default=15, help="epochs of the copy check's students and STMs")
    parser.add_argument("--copy-student", action="append", default=[])
    parser.add_argument("--work", type=Path, default=Path("bench-science"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--also", type=Path, action="append", default=[],
                        help="another --work folder whose results join the report (e.g. per-task MTMs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.models = args.models.split(",")
    args.teacher_seeds = [int(s) for s in args.teacher_seeds.split(",")] if args.teacher_seeds else args.seeds
    args.work.mkdir(parents=True, exist_ok=True)
    corpora = args.corpora.split(",")
    results = Results(args.work)
    if not args.report_only:
        if args.copy_check:
            copy_check(args, results)
        else:
            data = load_scaled(corpora, args.data_dir, {"train": args.max_train, "devel": args.max_devel,
                                                        "test": args.max_test})
            run_all(data, args, results)
    rows = list(results.rows)
    for folder in args.also:
        rows += labelled(Results(folder).rows, rows, folder)
    report(rows, [args.copy_corpus] if args.copy_check else corpora)
    logit_statistics(args.work)


if __name__ == "__main__":
    main()

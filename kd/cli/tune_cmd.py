"""`kd tune`: an Optuna study of one corpus's distillation, with trials done of N on stderr."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import click

from kd.cli.one_line_errors import handle_errors
from kd.cli.options import (WHOLE_NUMBER, allow_eval_overlap_option, apply_threads, data_dir_option, echo_result,
                            resolved_file, run_options, started_in, tracking_client, tracking_uri)
from kd.cli.progress import TuneDisplay, stop_cleanly, wants_live_display


def find_space(space: str) -> str:
    """The search space file: as given, where kd was started (under `mlflow run`, the project folder;
    kd works in the user's, `-C`), or shipped with kd (`kd.cli.shipped`)."""
    from kd.cli.shipped import SEARCH_SPACES, find_shipped

    return str(find_shipped(space, SEARCH_SPACES, "--space"))


@click.command()
@click.option("--task", required=True, help="Corpus name (found under --data-dir) or folder.")
@click.option("--cache", "cache_run", required=True, help="Cache run id of the teacher (kd cache-logits).")
@click.option("--space", required=True, type=click.Path(dir_okay=False), help="Search space YAML (search_spaces/).")
@click.option("--set", "overrides", multiple=True, metavar="NAME=VALUE",
              help="Fix an option for every trial instead of the space's value, e.g. --set epochs=3 (repeatable; "
                   "not an option the space tunes). The default study name includes it.")
@click.option("--n-trials", type=WHOLE_NUMBER, default=20, show_default=True,
              help="Finished trials the study should hold, across all workers.")
@click.option("--timeout", type=float, default=None, help="Stop starting trials after this many seconds.")
@click.option("--study", default=None, help="Study name (default: <corpus>-<space>[-<set values>]).")
@click.option("--storage", default=None,
              help="Optuna storage: a journal file path (default ./kd-optuna.log) or a database URL (postgresql://...).")
@click.option("--sampler", type=click.Choice(["tpe", "grid", "random"]), default="tpe", show_default=True)
@click.option("--pruner", type=click.Choice(["median", "percentile", "hyperband", "none"]), default="median",
              show_default=True, help="median prunes trials in the bottom half at an epoch, percentile the bottom third.")
@click.option("--seed", type=WHOLE_NUMBER, default=1, show_default=True)
@click.option("--unlabelled", default=None, type=click.Path(dir_okay=False),
              help="Every trial's student also learns from these sentences without gold tags (the --cache "
                   "must hold them: kd cache-logits --unlabelled FILE); --set unlabelled_ratio=R draws R per "
                   "labelled sentence each epoch. The default study name includes the text's digest.")
@allow_eval_overlap_option("the corpus's devel or test split")
@click.option("--refit-seeds", type=WHOLE_NUMBER, default=0, show_default=True,
              help="Afterwards, train the best configuration on train+devel with this many seeds and score test.")
@data_dir_option
@run_options("device", "threads", "experiment", "checkpoint_dir", "json", "progress")
@handle_errors
def tune(task, cache_run, space, overrides, n_trials, timeout, study, storage, sampler, pruner, seed, unlabelled,
         allow_eval_overlap, refit_seeds, data_dir, device, threads, experiment, checkpoint_dir, as_json, progress) -> None:
    """Tune the distillation of one corpus with an Optuna study (devel F1 of students trained on train)."""
    from kd.tuning.space import parse_override
    from kd.tuning.study import TrialHooks, TuneJob, tune as run_tune

    apply_threads(threads)
    job = TuneJob(task=task, cache_run=cache_run, space=find_space(space), n_trials=n_trials, timeout=timeout,
                  study=study, storage=storage, sampler=sampler, pruner=pruner, seed=seed, refit_seeds=refit_seeds,
                  data_dir=data_dir or None, device=device, experiment=experiment,
                  overrides=dict(parse_override(text) for text in overrides),
                  unlabelled=resolved_file(unlabelled), allow_eval_overlap=allow_eval_overlap)
    client = tracking_client()
    display = TuneDisplay(client, tracking_uri(), wants_live_display(progress))
    hooks = TrialHooks(on_trial=display.on_trial, training=display)
    with stop_cleanly(display, lambda run_id: f"trial run {run_id} is marked KILLED and its trial failed; "
                                               "the same kd tune command continues the study"):
        result = run_tune(job, client, Path(checkpoint_dir), log=display.message, hooks=hooks)
    echo_result(as_json, asdict(result))

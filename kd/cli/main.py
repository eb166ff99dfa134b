"""The `kd` command line: thin wrappers that parse options and call the library."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from kd import __version__
from kd.cli.data_cmd import data
from kd.cli.errors import handle_errors
from kd.cli.options import (apply_threads, as_path, build_model_options, build_training_options, data_dir_option,
                            echo_result, model_options, project_run_id, tracking_client, tracking_uri, training_options)


@click.group()
@click.version_option(__version__, prog_name="kd")
def cli() -> None:
    """Knowledge distillation for biomedical named entity recognition."""


cli.add_command(data)


@cli.command()
@click.option("--task", default=None, help="Corpus name (found under --data-dir) or folder.")
@data_dir_option
@click.option("--train-splits", default="train,devel", show_default=True,
              help="Splits to train on; without devel, devel F1 is reported each epoch and the best epoch kept.")
@click.option("--eval-split", default="test", show_default=True, help="Split scored after training.")
@click.option("--resume", "resume_run_id", default=None, help="Continue an interrupted run from its checkpoint.")
@model_options
@training_options
@handle_errors
def train(task, data_dir, train_splits, eval_split, resume_run_id, device, threads, experiment, run_name,
          checkpoint_dir, as_json, **kwargs) -> None:
    """Train a single-task model (STM) on one corpus."""
    from kd.training.jobs import parse_splits
    from kd.training.single_task import SingleTaskJob, train_single_task

    apply_threads(threads)
    job = None
    if not resume_run_id:
        if not task:
            raise click.UsageError("--task is required (or --resume RUN_ID)")
        job = SingleTaskJob(
            corpus=task, data_dir=data_dir, model=build_model_options(kwargs), training=build_training_options(kwargs),
            train_splits=parse_splits(train_splits, "--train-splits"),
            eval_split=parse_splits(eval_split, "--eval-split")[0], device=device, experiment=experiment,
            run_name=run_name)
    summary = train_single_task(job, tracking_client(), Path(checkpoint_dir), resume_run_id=resume_run_id,
                                attach_to=project_run_id())
    echo_result(as_json, {"run_id": summary.run_id, **summary.metrics})


@cli.command()
@click.option("--model", "model_ref", required=True, help="Run id, MLflow model URI, or a saved model folder.")
@click.option("--input", "input_path", required=True, type=click.Path(dir_okay=False),
              help="CoNLL file, or one whitespace-tokenised sentence per line.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None, help="Output CoNLL (default: stdout).")
@click.option("--task", default=None, help="Which corpus's head to use, for a multi-task model.")
@click.option("--device", default="cpu", show_default=True)
@handle_errors
def predict(model_ref, input_path, out_path, task, device) -> None:
    """Tag sentences with a trained model and write CoNLL (token<TAB>tag)."""
    from kd.data.conll import read_sentences_for_tagging, write_conll
    from kd.models.inference import SavedTagger
    from kd.tracking.models import download_model
    from kd.training.device import resolve_device

    sentences = read_sentences_for_tagging(input_path)
    tagger = SavedTagger(download_model(model_ref, tracking_uri()), resolve_device(device), task)
    tags = tagger.tag(sentences)
    write_conll(sentences, tags, out_path if out_path else sys.stdout)


def main() -> None:
    # Progress bars for copying local artifacts are noise in logs and CI.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    cli(prog_name="kd")


if __name__ == "__main__":
    main()

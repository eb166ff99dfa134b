"""Option groups shared by the training commands, and the environment the CLI reads (only here)."""
from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

# torch and the training stack load only in the commands that train: `kd data` and `kd compare`
# start in a fraction of the time.


def model_options(func: Callable) -> Callable:
    decorators = [
        click.option("--output", type=click.Choice(["softmax", "crf"]), default="softmax", show_default=True,
                     help="Softmax per token or a linear-chain CRF."),
        click.option("--word-dim", type=int, default=100, show_default=True,
                     help="Word embedding size (the vectors' size with --embeddings)."),
        click.option("--char-dim", type=int, default=25, show_default=True),
        click.option("--char-hidden", type=int, default=25, show_default=True, help="Character BiLSTM size per direction."),
        click.option("--shared-hidden", type=int, default=200, show_default=True, help="Shared BiLSTM size per direction."),
        click.option("--task-hidden", type=int, default=200, show_default=True, help="Task BiLSTM size per direction."),
        click.option("--hidden-dim", type=int, default=200, show_default=True, help="Hidden layer before the logits."),
        click.option("--dropout", type=float, default=0.5, show_default=True),
        click.option("--embeddings", type=click.Path(dir_okay=False), default=None,
                     help="Pretrained word vectors (word2vec text/binary or GloVe text)."),
    ]
    return functools.reduce(lambda f, d: d(f), reversed(decorators), func)


def precision_option() -> Callable:
    return click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
                        help="bf16 autocasts matrix products and LSTMs to bfloat16 (fast on CPUs with "
                             "avx512_bf16 or AMX, and on recent GPUs).")


def training_options(func: Callable) -> Callable:
    decorators = [
        click.option("--seed", type=int, default=1, show_default=True),
        click.option("--epochs", type=int, default=20, show_default=True),
        click.option("--batch-size", type=int, default=32, show_default=True, help="Sentences per batch."),
        click.option("--learning-rate", type=float, default=1e-3, show_default=True, help="Adam learning rate."),
        click.option("--clip-norm", type=float, default=5.0, show_default=True, help="Gradient norm clip (0: off)."),
        precision_option(),
        click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N]."),
        click.option("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)."),
        click.option("--experiment", default="kd", show_default=True, help="MLflow experiment."),
        click.option("--run-name", default=None, help="MLflow run name."),
        click.option("--checkpoint-dir", type=click.Path(file_okay=False), default=".kd/checkpoints",
                     show_default=True, help="Where per-epoch checkpoints are kept until the run finishes."),
        click.option("--json", "as_json", is_flag=True, help="Print one JSON object with the run id and metrics last."),
    ]
    return functools.reduce(lambda f, d: d(f), reversed(decorators), func)


def split_options(func: Callable) -> Callable:
    """--train-splits, --eval-split and --resume, shared by every training command."""
    decorators = [
        click.option("--train-splits", default="train,devel", show_default=True,
                     help="Splits to train on; without devel, devel F1 is scored each epoch and the best epoch kept."),
        click.option("--eval-split", default="test", show_default=True, help="Split scored after training."),
        click.option("--resume", "resume_run_id", default=None, help="Continue an interrupted run from its checkpoint."),
    ]
    return functools.reduce(lambda f, d: d(f), reversed(decorators), func)


def _empty_data_dir_is_unset(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    # `mlflow run` passes every declared parameter, so an unset data_dir arrives as `--data-dir ''`;
    # click lets an explicit value hide the environment, so the empty one falls back to it here.
    if value == "":
        return os.environ.get("KD_DATA_DIR") or None
    return value


def data_dir_option(func: Callable) -> Callable:
    return click.option("--data-dir", type=click.Path(file_okay=False), envvar="KD_DATA_DIR", default=None,
                        callback=_empty_data_dir_is_unset, help="Folder of corpora (default: $KD_DATA_DIR).")(func)


def build_model_options(kwargs: dict[str, Any]):
    from kd.training.jobs import ModelOptions

    return ModelOptions(**{k: kwargs.pop(k) for k in ("output", "word_dim", "char_dim", "char_hidden",
                                                      "shared_hidden", "task_hidden", "hidden_dim", "dropout",
                                                      "embeddings")})


def build_training_options(kwargs: dict[str, Any]):
    from kd.training.loop import TrainingOptions

    return TrainingOptions(**{k: kwargs.pop(k) for k in ("seed", "epochs", "batch_size", "learning_rate",
                                                         "clip_norm", "precision")})


def apply_threads(threads: int | None) -> None:
    if threads is not None:
        if threads < 1:
            raise click.BadParameter("must be at least 1", param_hint="--threads")
        import torch

        torch.set_num_threads(threads)


def tracking_client():
    """The MLflow client for $MLFLOW_TRACKING_URI, or the embedded sqlite default."""
    from kd.tracking.store import open_client, resolve_tracking_uri

    return open_client(resolve_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI")))


def project_run_id() -> str | None:
    """The run `mlflow run` created for this process, if any."""
    return os.environ.get("MLFLOW_RUN_ID") or None


def tracking_uri() -> str:
    from kd.tracking.store import resolve_tracking_uri

    return resolve_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI"))


def echo_result(as_json: bool, payload: dict[str, Any]) -> None:
    if as_json:
        click.echo(json.dumps(payload, sort_keys=True))
    else:
        for key, value in payload.items():
            click.echo(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")


def as_path(value: str | None) -> Path | None:
    return Path(value) if value else None

"""Option groups shared by the training commands, and the environment the CLI reads (only here)."""
from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from kd.cli.one_line_errors import option_name
from kd.errors import FieldError
from kd.option_schema import OPTIONS, check_value, names_of

# torch and the training stack load only in the commands that train: `kd data` and `kd compare`
# start in a fraction of the time.


class WholeNumber(click.ParamType):
    """An integer option that also takes `3.0`: `mlflow run` passes MLproject numbers as floats
    (MLproject has no integer type), and `-P epochs=1.0` is a user's natural spelling too."""

    name = "integer"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a whole number", param, ctx)
        if not number.is_integer():
            self.fail(f"{value!r} is not a whole number", param, ctx)
        return int(number)


WHOLE_NUMBER = WholeNumber()


def _checked(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """The schema's check when the command line is read, worded as the plan's and the search
    space's are (`--epochs 0: must be at least 1`)."""
    if value is not None:
        try:
            check_value(param.name, value)
        except FieldError as error:
            raise click.UsageError(error.worded(option_name(error.field))) from None
    return value


def schema_option(name: str) -> Callable:
    """The click option of a kd.option_schema option: its type, default, help and check."""
    option = OPTIONS[name]
    default = ",".join(option.default) if option.kind is list else option.default
    return click.option("--" + name.replace("_", "-"), type={int: WHOLE_NUMBER, float: float}.get(option.kind, str),
                        default=default, show_default=default is not None, help=option.help, callback=_checked,
                        metavar="[" + "|".join(option.choices) + "]" if option.choices and option.kind is str else None)


def schema_options(*names: str) -> Callable[[Callable], Callable]:
    def decorate(func: Callable) -> Callable:
        return functools.reduce(lambda f, name: schema_option(name)(f), reversed(names), func)
    return decorate


model_options = schema_options(*names_of("model"))


# Where and how a command runs and reports, the same in every command that has them.
RUN_OPTIONS = {
    "device": click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N]."),
    "threads": click.option("--threads", type=WHOLE_NUMBER, default=0, show_default=True,
                            help="CPU threads for torch; 0: kd's default: training takes the free cores (1 thread while "
                                 "another process is busy), other commands half the cores; $OMP_NUM_THREADS if "
                                 "set (bench/README.md, \"Threads\")."),
    "experiment": click.option("--experiment", default="kd", show_default=True, help="MLflow experiment."),
    "run_name": click.option("--run-name", default=None, help="MLflow run name."),
    "checkpoint_dir": click.option("--checkpoint-dir", type=click.Path(file_okay=False), default=".kd/checkpoints",
                                   show_default=True, help="Where per-epoch checkpoints are kept until a run finishes."),
    "json": click.option("--json", "as_json", is_flag=True, help="Print one JSON object with the results last."),
    "progress": click.option("--progress/--no-progress", "progress", default=None,
                             help="Live progress on stderr (default: only when stderr is a terminal)."),
}


def run_options(*names: str) -> Callable[[Callable], Callable]:
    return lambda func: functools.reduce(lambda f, name: RUN_OPTIONS[name](f), reversed(names), func)


def training_options(func: Callable) -> Callable:
    return schema_options(*names_of("training"))(run_options(*RUN_OPTIONS)(func))


def split_options(func: Callable) -> Callable:
    """--train-splits, --eval-split and --resume, shared by every training command."""
    return schema_options(*names_of("splits"))(
        click.option("--resume", "resume_run_id", default=None, help="Continue an interrupted run from its checkpoint.")(
            func))


def _empty_data_dir_is_unset(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    # `mlflow run` passes every declared parameter, so an unset data_dir arrives as `--data-dir ''`;
    # click lets an explicit value hide the environment, so the empty one falls back to it here.
    if value == "":
        return os.environ.get("KD_DATA_DIR") or None
    return value


def data_dir_option(func: Callable) -> Callable:
    return click.option("--data-dir", type=click.Path(file_okay=False), envvar="KD_DATA_DIR", default=None,
                        callback=_empty_data_dir_is_unset, help="Folder of corpora (default: $KD_DATA_DIR).")(func)


def take(options: dict[str, Any], group: str) -> dict[str, Any]:
    """The options of a schema group, taken out of a command's options."""
    return {name: options.pop(name) for name in names_of(group)}


def default_threads() -> int | None:
    """kd's thread count when `--threads` is 0 outside training (prediction, caching, export): half
    the cores, leaving the rest to another process. A user's OMP_NUM_THREADS is torch's choice and
    stays (None)."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    return max(1, usable_cores() // 2)


def usable_cores() -> int:
    """The cores this process may run on (its affinity, e.g. a container's or taskset's share)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def apply_threads(threads: int | None) -> None:
    """`--threads`: a count, or 0 (None) for `default_threads()`."""
    if threads is not None and threads < 0:
        raise click.BadParameter(f"{threads}: must be 0 (kd's default) or a positive count", param_hint="--threads")
    threads = threads or default_threads()
    if threads:
        import torch

        torch.set_num_threads(threads)


def training_threads(threads: int | None):
    """`--threads` of a training command, as training hooks: a count (or $OMP_NUM_THREADS) is set
    once; 0, kd's default, follows the machine's load: the free cores, up to half of them but at
    least 2, and one thread while another process is busy (kd.training.threads)."""
    from kd.training.loop import TrainingHooks

    if threads or os.environ.get("OMP_NUM_THREADS"):
        apply_threads(threads)
        return TrainingHooks()
    from kd.training.threads import LoadFollowingThreads

    cores = usable_cores()
    return LoadFollowingThreads(ceiling=max(min(2, cores), cores // 2), cores=cores)


def tracking_client():
    """The MLflow client for $MLFLOW_TRACKING_URI, or the embedded sqlite default."""
    from kd.tracking.backend import open_client, resolve_tracking_uri

    return open_client(resolve_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI")))


def project_run_id() -> str | None:
    """The run `mlflow run` created for this process, if any."""
    return os.environ.get("MLFLOW_RUN_ID") or None


def tracking_uri() -> str:
    from kd.tracking.backend import resolve_tracking_uri

    return resolve_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI"))


def echo_result(as_json: bool, payload: dict[str, Any]) -> None:
    if as_json:
        click.echo(json.dumps(payload, sort_keys=True))
    else:
        for key, value in payload.items():
            click.echo(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")


def as_path(value: str | None) -> Path | None:
    return Path(value) if value else None


def resolved_file(value: str | None) -> str | None:
    """An absolute path: a run resumed from another folder still finds the file."""
    return str(Path(value).resolve()) if value else None


def _change_directory(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value:
        # Where kd was started (under `mlflow run`, the project folder): shipped files such as
        # search_spaces/ are still found there.
        ctx.meta["kd.started_in"] = Path.cwd()
        os.chdir(value)


def directory_option(func: Callable) -> Callable:
    return click.option("-C", "--directory", type=click.Path(exists=True, file_okay=False), is_eager=True,
                        expose_value=False, callback=_change_directory,
                        help="Run as if kd was started in DIR: relative paths, ./mlflow.db, .kd/checkpoints, "
                             "comparison/ and kd-optuna.log are taken there (the MLproject passes the folder "
                             "`mlflow run` was started in).")(func)


def started_in() -> Path:
    """The folder kd was started in, before `-C` (the current one without it)."""
    return click.get_current_context().find_root().meta.get("kd.started_in", Path.cwd())


def option_given(name: str) -> bool:
    """Whether the user gave option `name` (by its parameter name), rather than its default."""
    from click.core import ParameterSource

    source = click.get_current_context().get_parameter_source(name)
    return source not in (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)


def project_target(client, experiment: str, chosen: bool) -> tuple[str, str | None]:
    """(experiment, run to log into) for a command that may run under `mlflow run`.

    `mlflow run` creates the process's run before kd starts, in the experiment the user named
    (`--experiment-name`) or else in `Default`. kd logs into that run (no empty twin) unless it is
    in `Default` while `--experiment` was left to kd's default, or the user chose another
    experiment with `-P experiment=NAME`: then kd's run goes to that experiment, like a CLI run,
    so that `kd compare` sees it, and the project run is tagged `kd.run_id` (see `point_project_run`)."""
    run_id = project_run_id()
    if run_id is None:
        return experiment, None
    project_experiment = client.get_experiment(client.get_run(run_id).info.experiment_id)
    if chosen and project_experiment.name != experiment:
        return experiment, None
    if not chosen and project_experiment.experiment_id == DEFAULT_EXPERIMENT_ID:
        return experiment, None
    return project_experiment.name, run_id


# MLflow's `Default` experiment, where `mlflow run` puts runs unless told otherwise.
DEFAULT_EXPERIMENT_ID = "0"


def point_project_run(client, experiment: str, run_id: str) -> None:
    """Tags the `mlflow run` run of this process with the run kd logged elsewhere (project_target)."""
    project_run = project_run_id()
    if project_run and project_run != run_id:
        client.set_tag(project_run, "kd.run_id", run_id)
        client.set_tag(project_run, "mlflow.note.content",
                       f"kd logged this project run's work as run {run_id} in experiment {experiment}.")


def allow_eval_overlap_option(whose: str) -> Callable[[Callable], Callable]:
    """`--allow-eval-overlap` of every command that takes --unlabelled text (cache-logits, distill, tune)."""
    # A flag that also takes a value: `mlflow run -P allow_eval_overlap=true` passes `--allow_eval_overlap true`.
    return click.option("--allow-eval-overlap", is_flag=False, flag_value=True, type=click.BOOL, default=False,
                        help=f"Accept --unlabelled text that holds sentences of {whose} (transductive "
                             "experiments; also --allow-eval-overlap true); the run is tagged unlabelled_eval_overlap.")

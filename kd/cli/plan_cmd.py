"""`kd plan show/run/status/report`: parse the options and call kd.jobs."""
from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from pathlib import Path

import click

from kd.cli.one_line_errors import handle_errors
from kd.cli.options import (WHOLE_NUMBER, as_path, data_dir_option, option_given, point_project_run, project_target,
                            tracking_client, tracking_uri)


def _names(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _seeds(value: str | None) -> list[int] | None:
    names = _names(value)
    if names is None:
        return None
    try:
        return [int(v) for v in names]
    except ValueError:
        raise click.BadParameter(f"{value}: expected comma-separated integers", param_hint="--seeds") from None


def plan_options(func: Callable) -> Callable:
    """The plan file and the options that change which cells it has (shared by every subcommand,
    so `status` and `report` find the plan run that `run` made with the same options)."""
    decorators = [
        click.argument("plan_file", metavar="PLAN", type=click.Path(dir_okay=False)),
        data_dir_option,
        click.option("--work", default=None, help="Work folder: subsampled corpora, checkpoints, reports "
                                                  "(default .kd/plans/<plan name>; shared by every worker)."),
        click.option("--only", default=None, help="Only this table (and the cells it needs)."),
        click.option("--corpora", default=None, help="Comma-separated corpora instead of the plan's."),
        click.option("--seeds", default=None, help="Comma-separated seeds instead of the plan's."),
        click.option("--epochs", type=WHOLE_NUMBER, default=None, help="Epochs of every teacher and model."),
        click.option("--max-train-sentences", type=WHOLE_NUMBER, default=None,
                     help="A deterministic sample of at most N sentences of each corpus's train split."),
    ]
    return functools.reduce(lambda f, d: d(f), reversed(decorators), func)


def resolve_plan(options: dict, *, allow_missing: bool = False):
    """The plan with the plan options (`plan_options`) applied; with `allow_missing` (`show`),
    corpora not downloaded yet are kept with unknown sizes."""
    from kd.jobs.driver import outline, resolve
    from kd.jobs.plan import load_plan, with_overrides

    from kd.cli.shipped import PLANS, find_shipped

    path = find_shipped(options["plan_file"], PLANS, "PLAN")
    plan = with_overrides(load_plan(path, options["data_dir"] or None), only=options["only"] or None,
                          corpora=_names(options["corpora"]), seeds=_seeds(options["seeds"]),
                          epochs=options["epochs"], max_train_sentences=options["max_train_sentences"])
    work = options["work"]
    return (outline if allow_missing else resolve)(plan, Path(work) if work else Path(".kd") / "plans" / plan.name)


def absolute_tracking_uri() -> str:
    """Workers may start in another folder: a relative sqlite store is made absolute."""
    from kd.tracking.backend import sqlite_path

    uri = tracking_uri()
    path = sqlite_path(uri)
    return f"sqlite:///{path.resolve()}" if path is not None and not path.is_absolute() else uri


@click.group()
def plan() -> None:
    """Run a whole experiment (experiments/*.yaml) as a graph of cells, on local workers or Dask."""


@plan.command()
@plan_options
@click.option("--experiment", default=None, help="Measure throughput from this experiment's finished runs.")
@handle_errors
def show(experiment, **options) -> None:
    """Cells per kind, tokens, and a cost estimate."""
    from kd.jobs.estimate import estimate

    resolved = resolve_plan(options, allow_missing=True)
    found = estimate(resolved, tracking_client(), experiment)
    click.echo(f"plan {resolved.plan.name}: {len(resolved.cells)} cells "
               f"({', '.join(f'{n} {k}' for k, n in found.cells.items() if n or k not in ('text', 'study'))}), "
               f"{len(resolved.plan.tables)} table{'s' if len(resolved.plan.tables) != 1 else ''} ({', '.join(resolved.plan.tables)})")
    for corpus, count in found.tokens.items():
        click.echo(f"  {corpus}: {count:,} tokens")
    for corpus in found.unknown:
        click.echo(f"  {corpus}: unknown (not downloaded: kd data download {corpus} --dest DIR)")
    click.echo(f"training: {found.epoch_tokens:,} token-epochs at {found.tokens_per_second:,.0f} tokens/s "
               f"({found.source}); caching: {found.cache_tokens:,} tokens")
    transformer = found.transformer
    if transformer.epoch_tokens:
        rates = (f"at {transformer.train_tokens_per_second:,.0f} and {transformer.predict_tokens_per_second:,.0f} "
                 f"tokens/s" if transformer.known else "at an unknown speed")
        click.echo(f"transformer teachers: {transformer.epoch_tokens:,} token-epochs, caching through them: "
                   f"{transformer.cache_tokens:,} tokens, {rates} ({transformer.source})")
    unknown = " plus the transformer teachers (unknown)" if transformer.epoch_tokens and not transformer.known else ""
    unknown += f" plus the training on {', '.join(found.unknown)} (unknown)" if found.unknown else ""
    click.echo(f"start-up: {found.cell_seconds:.0f} s per cell")
    click.echo(f"estimate: {found.seconds / 3600:.2f} h ({found.seconds:,.0f} s) for one worker{unknown}")


@plan.command()
@plan_options
@click.option("--experiment", default="kd", show_default=True, help="MLflow experiment of the cells and the plan run.")
@click.option("--workers", type=WHOLE_NUMBER, default=0, help="Local worker processes (0: one per core).")
@click.option("--cluster", default=None, help="Address of a running Dask scheduler (tcp://HOST:8786).")
@click.option("--threads", type=WHOLE_NUMBER, default=0, help="Torch threads per cell (0: cores / local workers; "
                                                              "1 on a cluster).")
@click.option("--device", default="auto", show_default=True)
@click.option("--no-report", is_flag=True, help="Do not report the tables when every cell finished.")
@click.option("--dashboard", is_flag=True, help="Serve the local cluster's Dask dashboard (127.0.0.1:8787, or "
                                                "the next free port; its link is printed). Default: none.")
@handle_errors
def run(experiment, workers, cluster, threads, device, no_report, dashboard, **options) -> None:
    """Run every cell not finished yet, then report the tables."""
    from kd.cli.progress import stop_plan_cleanly
    from kd.jobs.driver import run_plan
    from kd.jobs.executor import ExecutorOptions

    executor = ExecutorOptions(workers=workers or None, cluster=cluster or None, threads=threads or None,
                               dashboard=dashboard, device=device)
    resolved = resolve_plan(options)

    def progress(result, done: int, total: int) -> None:
        detail = f"run {result.run_id}" if result.ok else result.message
        click.echo(f"[{done}/{total}] {result.status:8} {result.label} ({result.seconds:.1f} s) {detail}", err=True)

    client = tracking_client()
    experiment, attach_to = project_target(client, experiment, option_given("experiment"))
    with stop_plan_cleanly("Running the same `kd plan run` again"):
        outcome = run_plan(resolved, client, absolute_tracking_uri(), experiment, executor,
                           attach_to=attach_to, on_result=progress,
                           on_dashboard=lambda link: click.echo(f"Dask dashboard: {link}", err=True))
    point_project_run(client, experiment, outcome.plan_run_id)
    click.echo(f"plan run {outcome.plan_run_id}: " + ", ".join(f"{n} {s}" for s, n in sorted(outcome.counts.items()))
               + f" in {outcome.seconds:.1f} s", err=True)
    if not outcome.ok:
        failed = [r for r in outcome.results if r.status == "failed"]
        raise click.ClickException(f"{len(failed)} cell(s) failed, e.g. {failed[0].label}: {failed[0].message}")
    if not no_report:
        _report(resolved, experiment, None)


@plan.command()
@plan_options
@click.option("--experiment", default="kd", show_default=True)
@click.option("--watch", type=float, default=None, help="Refresh every this many seconds until nothing runs.")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def status(experiment, watch, as_json, **options) -> None:
    """Done, running, failed and pending cells."""
    from kd.jobs.driver import plan_status

    resolved = resolve_plan(options)
    client = tracking_client()
    while True:
        states = plan_status(resolved, client, experiment)
        if as_json:
            click.echo(json.dumps({state: [c.label for c in cells] for state, cells in states.items()}, sort_keys=True))
        else:
            click.echo(" | ".join(_count(state, cells) for state, cells in states.items()))
            for cell in states["running"] + states["failed"]:
                click.echo(f"  {'running' if cell in states['running'] else 'failed'}: {cell.label}")
        if not watch or not (states["running"] or states["pending"]):
            return
        time.sleep(watch)


def _count(state: str, cells: list) -> str:
    from kd.jobs.driver import count_by_kind

    kinds = ", ".join(f"{n} {kind}" for kind, n in count_by_kind(cells).items() if n)
    return f"{state} {len(cells)}" + (f" ({kinds})" if kinds else "")


@plan.command()
@plan_options
@click.option("--experiment", default="kd", show_default=True)
@click.option("--out", default=None, help="Output folder (default: <work>/reports).")
@handle_errors
def report(experiment, out, **options) -> None:
    """Every table of the plan through kd compare, logged to the plan run."""
    _report(resolve_plan(options), experiment, out)


def _report(resolved, experiment: str, out: str | None) -> None:
    from kd.jobs.plan_report import report_plan
    from kd.jobs.plan_runs import plan_run_or_error

    client = tracking_client()
    plan_run = plan_run_or_error(client, experiment, resolved.plan_id, resolved.plan.path)
    # Per plan run: two runs of the plan with different options do not overwrite each other's reports.
    folder = as_path(out) or resolved.work_dir / "reports" / plan_run.info.run_id
    results = report_plan(resolved, client, experiment, plan_run.info.run_id, folder)
    for name, result in results.items():
        click.echo(result["markdown"])
        for note in result["validity"]:
            click.echo(f"note: {name}: {note}", err=True)
    click.echo(f"reports in {folder}", err=True)

"""`kd export`: a run's tagger as a file other runtimes load (ONNX)."""
from __future__ import annotations

from collections.abc import Callable

import click

from kd.cli.one_line_errors import handle_errors
from kd.cli.options import apply_threads, echo_result, run_options, tracking_client, tracking_uri


@click.command()
@click.argument("model")
@click.option("--format", "export_format", type=click.Choice(["onnx"]), default="onnx", show_default=True,
              help="onnx: the tagger's graph for ONNX Runtime (pip install 'kd[onnx]'); CRF decoding runs after it.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Also write the file here (needed when MODEL is a folder or URI, not a run).")
@click.option("--task", default=None, help="Which corpus's head to export, for a multi-task model.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with what was written last.")
@run_options("threads")
@handle_errors
def export(model, export_format, out, task, as_json, threads) -> None:
    """Export MODEL (a run id, MLflow model URI or saved model folder); a run gets the export as its
    logged model `model_onnx`, beside its torch model."""
    from kd.tracking.onnx_model import export_run_onnx

    apply_threads(threads)
    summary = export_run_onnx(model, tracking_uri(), tracking_client(), task, out)
    places = summary.files + ([f"logged model {summary.logged_model_id} of run {model}"]
                              if summary.logged_model_id else [])
    if as_json:
        echo_result(True, {"format": export_format, "task": summary.task, "files": summary.files,
                           "logged_model_id": summary.logged_model_id})
    else:
        click.echo(f"exported {model} ({summary.task}) to {' and '.join(places)}")


def export_at_end_option(func: Callable) -> Callable:
    """`--export onnx` of the single-task training commands (`train`, `distill`)."""
    return click.option("--export", "export_format", type=click.Choice(["onnx"]), default=None,
                        help="When the run has finished, export its model as `kd export RUN --format onnx` does "
                             "(logged model `model_onnx`); needs kd[onnx], checked before training.")(func)


def check_export_available(export_format: str | None) -> None:
    """Refuses `--export` before any training where its packages are missing."""
    if export_format == "onnx":
        from kd.models.onnx_export import require

        require("onnx")
        require("onnxruntime")


def export_finished_run(export_format: str | None, run_id: str) -> dict:
    """The export of a finished run, as fields of the command's JSON result (none without --export)."""
    if export_format != "onnx":
        return {}
    from kd.tracking.onnx_model import export_run_onnx

    return {"onnx_model_id": export_run_onnx(run_id, tracking_uri(), tracking_client(), None, None).logged_model_id}

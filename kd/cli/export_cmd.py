"""`kd export`: a run's tagger as a file other runtimes load (ONNX)."""
from __future__ import annotations

import click

from kd.cli.errors import handle_errors
from kd.cli.options import apply_threads, echo_result, threads_option, tracking_client, tracking_uri


@click.command()
@click.argument("model")
@click.option("--format", "export_format", type=click.Choice(["onnx"]), default="onnx", show_default=True,
              help="onnx: the tagger's graph for ONNX Runtime (pip install 'kd[onnx]'); CRF decoding runs after it.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Also write the file here (needed when MODEL is a folder or URI, not a run).")
@click.option("--task", default=None, help="Which corpus's head to export, for a multi-task model.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with what was written last.")
@threads_option()
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

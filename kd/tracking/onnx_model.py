"""Exporting a run's tagger to ONNX, logging it with MLflow's ONNX flavour as the run's logged model
`model_onnx` beside its torch model `model`, and loading it again checked against that model."""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kd.errors import FieldError, KdError
from kd.models.inference import SavedTransformer, load_saved_tagger
from kd.models.io import SavedModel
from kd.tracking.logged_models import MODEL_ARTIFACT, RUN_ID, fetched_model, log_model_folder, logged_model_location
from kd.tracking.runs import TrackedRun

if TYPE_CHECKING:  # onnxruntime loads only in the commands that use it
    from kd.models.onnx_runtime import OnnxTagger

ONNX_MODEL = "model_onnx"
# The file name MLflow's ONNX flavour gives the graph in its model folder.
ONNX_FILE = "model.onnx"


@dataclass
class ExportSummary:
    task: str
    files: list[str]  # where the ONNX file was written (--out), if anywhere
    logged_model_id: str | None  # the run's logged model `model_onnx`, for a run


def fetch_bilstm_model(model: str, tracking_uri: str) -> tuple[SavedModel, str]:
    """The BiLSTM tagger named by a run id, MLflow URI or folder, and how errors name it."""
    if RUN_ID.match(model) and not Path(model).is_dir() and not run_has_model(model, tracking_uri):
        raise KdError(f"{model}: the run has no model (only training runs have one; is it a cache?)")
    with fetched_model(model, tracking_uri) as (directory, shown_as):
        saved = load_saved_tagger(directory, "cpu", shown_as=shown_as)
    if isinstance(saved, SavedTransformer):
        raise KdError(f"{model}: a transformer teacher; ONNX export is for kd's BiLSTM taggers")
    return saved, shown_as


def run_has_model(run_id: str, tracking_uri: str) -> bool:
    """Whether a run has a logged model `model` or (runs before logged models) an artifact of that
    name; a run that does not exist counts as having one, so that fetching it says so."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return logged_model_location(tracking_uri, run_id) is not None or any(
            entry.path == MODEL_ARTIFACT for entry in MlflowClient(tracking_uri).list_artifacts(run_id))
    except MlflowException:
        return True


def export_run_onnx(model: str, tracking_uri: str, client, task: str | None, out: str | Path | None) -> ExportSummary:
    """Exports one task of the tagger of `model` (a run id, MLflow URI or folder) to ONNX; writes
    it to `out` if given and, for a run id, logs it as the run's `model_onnx`. A model that is not
    a run needs `out` (there is nowhere else to put it)."""
    from kd.models.onnx_export import export_onnx
    from kd.models.onnx_runtime import OnnxTagger

    is_run = bool(RUN_ID.match(model)) and not Path(model).is_dir()
    if out is None and not is_run:
        raise FieldError("out", None, f"{model} is not a run to log the ONNX model to: give the file to write")
    saved, _ = fetch_bilstm_model(model, tracking_uri)
    with tempfile.TemporaryDirectory(prefix="kd-onnx-") as staging:
        exported = export_onnx(saved, task, Path(staging) / ONNX_FILE)
        task = OnnxTagger(exported).task
        if out is not None:
            _copy_out(exported, Path(out))
        logged = log_onnx_model(TrackedRun(client, model), exported) if is_run else None
    return ExportSummary(task=task, files=[str(out)] if out is not None else [], logged_model_id=logged)


def _copy_out(exported: Path, out: Path) -> None:
    from kd.errors import disk_full_names
    from kd.utils.atomic import atomic_path

    try:
        with disk_full_names(out), atomic_path(out) as target:
            shutil.copyfile(exported, target)
    except OSError as error:
        raise FieldError("out", str(out), f"cannot write ({error.strerror or error})") from None


def log_onnx_model(run: TrackedRun, onnx_path: Path) -> str:
    """Logs an exported ONNX file as the run's logged model `model_onnx` (MLflow's ONNX flavour:
    `mlflow.onnx.load_model` and `mlflow.pyfunc.load_model` load it), with its tensor signature."""
    def save(target: Path, mlflow_model) -> None:
        import mlflow.onnx
        import numpy as np
        import onnx
        from mlflow.models import ModelSignature
        from mlflow.types.schema import Schema, TensorSpec

        from kd.models.onnx_export import INPUT_NAMES, OUTPUT_NAME

        ranks = {"words": 2, "form_index": 2, "form_chars": 2, "form_lengths": 1, "lengths": 1}
        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.int64), (-1,) * ranks[name], name) for name in INPUT_NAMES]),
            outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, -1), OUTPUT_NAME)]))
        mlflow.onnx.save_model(onnx.load(str(onnx_path)), str(target), mlflow_model=mlflow_model,
                               signature=signature, save_as_external_data=False)

    return log_model_folder(run, ONNX_MODEL, "tagger-onnx", save)


def load_onnx_tagger(model: str, tracking_uri: str, onnx_file: str | None = None, task: str | None = None,
                     threads: int | None = None) -> OnnxTagger:
    """The ONNX tagger of `model` (a run id, MLflow URI or folder): the file `onnx_file` or else
    the run's logged `model_onnx`, refused (KdError) unless it was exported from the model's weights
    and vocabularies and tags `task` (when given)."""
    from kd.models.onnx_runtime import OnnxTagger

    saved, shown_as = fetch_bilstm_model(model, tracking_uri)
    if onnx_file is not None:
        if not Path(onnx_file).is_file():
            raise FieldError("onnx", onnx_file, "no such file")
        tagger = OnnxTagger(onnx_file, threads=threads)
    else:
        if not RUN_ID.match(model) or Path(model).is_dir():
            raise FieldError("onnx", None, f"{model} is not a run with a logged ONNX model: give the ONNX file")
        if logged_model_location(tracking_uri, model, ONNX_MODEL) is None:
            raise KdError(f"{model}: the run has no ONNX model (kd export {model} --format onnx)")
        with fetched_model(model, tracking_uri, ONNX_MODEL) as (directory, _):
            tagger = OnnxTagger(directory / ONNX_FILE, shown_as=f"runs:/{model}/{ONNX_MODEL}", threads=threads)
    tagger.check_matches(saved, shown_as)
    tagger.check_task(task)
    return tagger

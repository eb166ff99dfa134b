"""Logging a saved tagger as an MLflow pyfunc model, and finding it again."""
from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

import kd
from kd.errors import KdError, disk_full_names
from kd.models.inference import (SavedTransformer, description_tasks, find_saved_tagger, load_saved_tagger,
                                 saved_tasks)
from kd.models.io import SavedModel, load_model
from kd.tracking.runs import TrackedRun

MODEL_ARTIFACT = "model"
RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def _requirements(transformer: bool) -> list[str]:
    from importlib.metadata import version

    names = ("torch", "mlflow", "numpy", "pandas") + (
        ("transformers", "safetensors", "tokenizers") if transformer else ())
    return [f"{name}=={version(name)}" for name in names]


def _saved_tasks(model_directory: Path) -> tuple[list[str], bool]:
    """The tasks of a saved model folder of either kind, in head order, and whether it is a transformer."""
    from kd.models import transformer

    found = find_saved_tagger(model_directory)
    return description_tasks(found), (found / transformer.CONFIG_FILE).is_file()


# Shown on the logged model's page and checked when it is logged (MLflow runs the model on it).
EXAMPLE_SENTENCE = ["Aspirin", "induced", "asthma", "in", "two", "patients", "."]


def log_tagger_model(run: TrackedRun, model_directory: Path) -> str:
    """Logs the saved model folder as the pyfunc logged model `model` of the run (listed under the
    experiment's "Models" and the run's "Logged models"; `runs:/RUN_ID/model` still finds it), with a
    signature and an input example. kd's own source goes with it (code_paths), so the model also
    serves from an environment without kd installed. Returns the logged model's id."""
    return log_model_folder(run, MODEL_ARTIFACT, "tagger",
                            lambda target, mlflow_model: _save_pyfunc(target, model_directory, mlflow_model))


def log_model_folder(run: TrackedRun, name: str, model_type: str,
                     save: Callable[[Path, "mlflow.models.Model"], None]) -> str:
    """Logs the MLflow model folder that `save(target, mlflow_model)` writes as the logged model
    `name` of the run, finished or not; returns the logged model's id.

    The steps of `mlflow.<flavour>.log_model`, through the run's client: log_model itself puts the
    model in the experiment and store of MLflow's global state (the `Default` experiment of the
    environment's URI), and setting that state would change the process's environment."""
    import mlflow.models
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus

    logged = run.get()
    model = run.client.create_logged_model(
        experiment_id=logged.info.experiment_id, name=name, source_run_id=run.run_id,
        params=dict(logged.data.params), model_type=model_type,
        tags={key: logged.data.tags[key] for key in ("model_kind", "task", "output") if key in logged.data.tags})
    try:
        with tempfile.TemporaryDirectory() as staging:
            target = Path(staging) / name
            save(target, mlflow.models.Model(artifact_path=model.artifact_location, model_uuid=model.model_id,
                                             run_id=run.run_id, model_id=model.model_id))
            with disk_full_names(f"artifact store {model.artifact_location}"):
                run.client.log_model_artifacts(model.model_id, str(target))
    except BaseException:
        run.client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)  # not left PENDING
        raise
    run.client.log_outputs(run.run_id, [LoggedModelOutput(model.model_id, step=0)])
    run.client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    return model.model_id


def _save_pyfunc(target: Path, model_directory: Path, mlflow_model) -> None:
    """The MLflow model folder: this package's pyfunc_model.py as "model from code", the saved tagger
    (either kind) as its artifact, a signature and an input example (which MLflow checks by running the model, about
    a second for a default-size tagger)."""
    import logging
    import warnings

    import mlflow.pyfunc
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, ParamSchema, ParamSpec, Schema

    package = Path(kd.__file__).resolve().parent
    tasks, is_transformer = _saved_tasks(model_directory)
    # A multi-task model tags with the head of the corpus `task` names, its first by default.
    # Tokens (tags out) or raw text (entities out, kd.tracking.pyfunc_model): either column. The
    # outputs differ by input, so the signature declares none.
    signature = ModelSignature(inputs=Schema([ColSpec(Array(DataType.string), "tokens", required=False),
                                              ColSpec(DataType.string, "text", required=False)]),
                               params=ParamSchema([ParamSpec("task", DataType.string, tasks[0])]))
    mlflow_logger = logging.getLogger("mlflow")
    level = mlflow_logger.level
    mlflow_logger.setLevel(logging.WARNING)  # the check logs a line per step at INFO
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mlflow.pyfunc.save_model(
                path=str(target), python_model=str(package / "tracking" / "pyfunc_model.py"),
                artifacts={"tagger": str(model_directory)}, code_paths=[str(package)], signature=signature,
                input_example=pd.DataFrame({"tokens": [EXAMPLE_SENTENCE]}), pip_requirements=_requirements(is_transformer),
                mlflow_model=mlflow_model)
    finally:
        mlflow_logger.setLevel(level)
    for cache in target.rglob("__pycache__"):  # compiled copies of kd's source are not part of the model
        shutil.rmtree(cache, ignore_errors=True)


def logged_model_location(tracking_uri: str, run_id: str, name: str = MODEL_ARTIFACT) -> str | None:
    """Where the logged model `name` of a run keeps its files, or None for a run that logged its
    model as a plain artifact (before logged models) or has none of that name. MLflow's own `runs:/` lookup of a logged model
    reads the model through the global tracking URI, not the one given, so kd looks it up itself."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    outputs = client.get_run(run_id).outputs
    found = [logged for logged in (client.get_logged_model(output.model_id)
                                   for output in (outputs.model_outputs if outputs else []) or [])
             if logged.name == name]
    # The newest, when a model was logged again (kd export of another task).
    return max(found, key=lambda logged: logged.creation_timestamp).artifact_location if found else None


@contextlib.contextmanager
def fetched_model(model: str, tracking_uri: str, name: str = MODEL_ARTIFACT) -> Iterator[tuple[Path, str]]:
    """A local folder holding the model named by a run id (its logged model `name`), any MLflow
    model/artifact URI or a folder, and the name to show for it in errors. A download goes to a temporary folder that is
    removed when the block ends (load the model inside it)."""
    import mlflow.artifacts

    if Path(model).is_dir():
        yield Path(model), model
        return
    uri = f"runs:/{model}/{name}" if RUN_ID.match(model) else model
    with tempfile.TemporaryDirectory(prefix="kd-model-") as staging:
        try:
            source = (logged_model_location(tracking_uri, model, name) if RUN_ID.match(model) else None) or uri
            path = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=staging, tracking_uri=tracking_uri)
        except Exception as error:
            raise KdError(f"{model}: cannot fetch the model ({str(error).splitlines()[0]})") from None
        yield Path(path), uri


def load_logged_model(model: str, tracking_uri: str, device: str | torch.device = "cpu") -> SavedModel:
    """The model named by a run id, MLflow URI or folder, loaded; nothing fetched is left behind,
    and errors name the run or URI, not a temporary copy."""
    with fetched_model(model, tracking_uri) as (directory, shown_as):
        return load_model(directory, device, shown_as=shown_as)


def load_logged_tagger(model: str, tracking_uri: str, device: str | torch.device = "cpu",
                       check_tasks: Callable[[list[str]], object] | None = None) -> SavedModel | SavedTransformer:
    """As `load_logged_model`, for a model of either kind: a BiLSTM tagger or a transformer
    teacher (`kd train-teacher --kind transformer`, whose run keeps its folder as the artifact `model`).
    `check_tasks` is given the tasks the model's description lists before its weights load (a
    refusal then takes no loading: a transformer's takes seconds)."""
    with fetched_model(model, tracking_uri) as (directory, shown_as):
        tasks = saved_tasks(directory, shown_as) if check_tasks else None
        if tasks:
            check_tasks(tasks)
        return load_saved_tagger(directory, device, shown_as=shown_as)

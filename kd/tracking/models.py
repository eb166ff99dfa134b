"""Logging a saved tagger as an MLflow pyfunc model, and finding it again."""
from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

import kd
from kd.errors import KdError
from kd.models.io import SavedModel, load_model
from kd.tracking.runs import TrackedRun

MODEL_ARTIFACT = "model"
RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("torch", "mlflow", "numpy", "seqeval", "pandas")]


def log_tagger_model(run: TrackedRun, model_directory: Path) -> None:
    """Logs the saved model folder as the pyfunc model `model` of the run. kd's own source goes
    with it (code_paths), so the model also serves from an environment without kd installed."""
    import mlflow.pyfunc
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Schema

    import warnings

    package = Path(kd.__file__).resolve().parent
    signature = ModelSignature(inputs=Schema([ColSpec(Array(DataType.string), "tokens")]),
                               outputs=Schema([ColSpec(Array(DataType.string))]))
    with tempfile.TemporaryDirectory() as staging, warnings.catch_warnings():
        # MLflow nags for an input example; the signature already documents the input.
        warnings.filterwarnings("ignore", message=".*input example.*")
        target = Path(staging) / MODEL_ARTIFACT
        mlflow.pyfunc.save_model(
            path=str(target),
            python_model=str(package / "tracking" / "pyfunc_model.py"),
            artifacts={"tagger": str(model_directory)},
            code_paths=[str(package)],
            signature=signature,
            pip_requirements=_requirements(),
        )
        run.log_artifact(target, MODEL_ARTIFACT)


@contextlib.contextmanager
def fetched_model(model: str, tracking_uri: str) -> Iterator[tuple[Path, str]]:
    """A local folder holding the model named by a run id, any MLflow model/artifact URI or a
    folder, and the name to show for it in errors. A download goes to a temporary folder that is
    removed when the block ends (load the model inside it)."""
    import mlflow.artifacts

    if Path(model).is_dir():
        yield Path(model), model
        return
    uri = f"runs:/{model}/{MODEL_ARTIFACT}" if RUN_ID.match(model) else model
    with tempfile.TemporaryDirectory(prefix="kd-model-") as staging:
        try:
            path = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=staging, tracking_uri=tracking_uri)
        except Exception as error:
            raise KdError(f"{model}: cannot fetch the model ({str(error).splitlines()[0]})") from None
        yield Path(path), uri


def load_logged_model(model: str, tracking_uri: str, device: str | torch.device = "cpu") -> SavedModel:
    """The model named by a run id, MLflow URI or folder, loaded; nothing fetched is left behind,
    and errors name the run or URI, not a temporary copy."""
    with fetched_model(model, tracking_uri) as (directory, shown_as):
        return load_model(directory, device, shown_as=shown_as)

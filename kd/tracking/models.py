"""Logging a saved tagger as an MLflow pyfunc model, and finding it again."""
from __future__ import annotations

import re
import tempfile
from pathlib import Path

import kd
from kd.errors import KdError
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


def download_model(model: str, tracking_uri: str) -> Path:
    """A local folder holding the model named by a run id or any MLflow model/artifact URI."""
    import mlflow.artifacts

    uri = f"runs:/{model}/{MODEL_ARTIFACT}" if RUN_ID.match(model) else model
    if Path(model).is_dir():
        return Path(model)
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, tracking_uri=tracking_uri))
    except Exception as error:
        raise KdError(f"--model {model}: cannot fetch the model ({str(error).splitlines()[0]})") from None

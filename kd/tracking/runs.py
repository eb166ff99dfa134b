"""An MLflow run driven through an explicit client: no global active run, so library code and
tests can hold several runs (a study and its trials, a teacher and its cache) at once."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kd.errors import KdError, disk_full_names

# MLflow rejects longer param values.
MAX_PARAM_LENGTH = 6000
# The process that owns a RUNNING run: a run whose owner is gone from its host was killed, and is
# marked FAILED by the next kd command that meets it instead of staying RUNNING forever.
OWNER_HOST, OWNER_PID = "kd.host", "kd.pid"


def owner_tags() -> dict[str, str]:
    return {OWNER_HOST: socket.gethostname(), OWNER_PID: str(os.getpid())}


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _other_owner(run) -> int | None:
    """The id of the process on this host, other than this one, that owns the run, if tagged."""
    tags = run.data.tags
    pid = tags.get(OWNER_PID, "")
    if tags.get(OWNER_HOST) != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return None
    return int(pid)


def owner_is_gone(run) -> bool:
    """True for a RUNNING run whose owning process, on this host, no longer exists. A run owned on
    another host, or without owner tags, cannot be judged and is left alone."""
    pid = _other_owner(run)
    return run.info.status == "RUNNING" and pid is not None and not process_alive(pid)


def fail_if_abandoned(client, run):
    """The run, marked FAILED first if it is RUNNING with its owner process gone (killed before it
    could end the run); kd calls this wherever it meets a run it is about to use."""
    if not owner_is_gone(run):
        return run
    tags = run.data.tags
    client.set_tag(run.info.run_id, "kd.failure", f"process {tags[OWNER_PID]} on {tags[OWNER_HOST]} "
                                                   "ended without finishing the run")
    client.set_terminated(run.info.run_id, status="FAILED")
    return client.get_run(run.info.run_id)


def git_commit(path: Path | None = None) -> str:
    """The commit of the kd checkout the code runs from, or "unknown" for an installed copy."""
    where = path or Path(__file__).resolve().parent
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 else "unknown"


# MLflow 3's UI opens an experiment by its kind: without this tag it guesses, and an experiment of
# kd's runs opened on the GenAI "Traces" page; this kind opens it on its runs (the value is the
# UI's name for a classic machine-learning experiment).
EXPERIMENT_KIND_TAG, CLASSIC_ML = "mlflow.experimentKind", "custom_model_development"


def mark_classic_ml(client, experiment_id: str) -> None:
    """Tags an experiment as a classic ML one unless it already has a kind (a user's choice stays)."""
    experiment = client.get_experiment(experiment_id)
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, CLASSIC_ML)


def ensure_experiment(client, name: str) -> str:
    """The id of the experiment `name`, created as a classic ML experiment if it does not exist."""
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        if EXPERIMENT_KIND_TAG not in existing.tags:
            client.set_experiment_tag(existing.experiment_id, EXPERIMENT_KIND_TAG, CLASSIC_ML)
        return existing.experiment_id
    try:
        return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: CLASSIC_ML})
    except Exception:  # another process created it first
        return client.get_experiment_by_name(name).experiment_id


class TrackedRun:
    def __init__(self, client, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    @classmethod
    def start(cls, client, experiment: str, run_name: str | None, tags: Mapping[str, str],
              parent_run_id: str | None = None, attach_to: str | None = None) -> "TrackedRun":
        """A new run in `experiment`; or, with `attach_to`, the run that `mlflow run` created for
        this process (its MLFLOW_RUN_ID), so a project run does not leave an empty twin."""
        if attach_to:
            run = cls(client, attach_to)
            mark_classic_ml(client, run.get().info.experiment_id)
            run.set_tags({**tags, **owner_tags()})
            return run
        experiment_id = ensure_experiment(client, experiment)
        all_tags = {**{key: str(value) for key, value in tags.items()}, **owner_tags()}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = client.create_run(experiment_id, tags=all_tags, run_name=run_name)
        return cls(client, run.info.run_id)

    @classmethod
    def resumable(cls, client, run_id: str) -> "TrackedRun":
        """The run to resume, checked but left as it is: the caller reads its checkpoint and data
        first and takes the run over (`take_over`) only then, so a refused resume changes nothing."""
        try:
            run = client.get_run(run_id)
        except Exception:
            raise KdError(f"--resume {run_id}: no such run in the tracking store") from None
        run = fail_if_abandoned(client, run)
        if run.info.status == "FINISHED":
            raise KdError(f"--resume {run_id}: the run already finished")
        owner = _other_owner(run)
        if run.info.status == "RUNNING" and owner is not None:  # alive, or fail_if_abandoned had ended it
            raise KdError(f"--resume {run_id}: the run is still running (process {owner})")
        return cls(client, run_id)

    def take_over(self) -> None:
        """Marks the run RUNNING in this process (its owner tags name this process)."""
        self.client.update_run(self.run_id, status="RUNNING")
        self.set_tags(owner_tags())

    def get(self):
        return self.client.get_run(self.run_id)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        # Params are immutable in MLflow; those `mlflow run` already logged from -P stay as given.
        logged = self.get().data.params
        items = [Param(key, str(value)[:MAX_PARAM_LENGTH]) for key, value in params.items() if key not in logged]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start:start + 100])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(key, float(value), now, step or 0) for key, value in metrics.items()]
        for start in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[start:start + 500])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        where = self.get().info.artifact_uri + (f"/{artifact_path}" if artifact_path else "")
        with disk_full_names(f"artifact store {where}"):
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), artifact_path)
            else:
                self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_json(self, data: Any, artifact_file: str) -> None:
        with tempfile.TemporaryDirectory() as directory:
            target = Path(directory) / Path(artifact_file).name
            target.write_text(json.dumps(data, indent=2, ensure_ascii=False))
            parent = str(Path(artifact_file).parent)
            self.log_artifact(target, None if parent == "." else parent)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)

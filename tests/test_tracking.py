"""Tracking store creation under concurrency, and the MLflow project entry point."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mlflow import MlflowClient

from tests.conftest import SMALL_MODEL_PARAMS, mlflow_run

START_RUN = """
import sys
from kd.tracking.store import open_client
from kd.tracking.runs import TrackedRun
client = open_client(sys.argv[1])
run = TrackedRun.start(client, "race", None, {"model_kind": "stm"})
run.log_metrics({"x": 1.0}, step=1)
run.finish()
"""


def test_processes_starting_at_once_on_a_fresh_store_do_not_race(tmp_path):
    uri = f"sqlite:///{tmp_path / 'fresh.db'}"
    processes = [subprocess.Popen([sys.executable, "-c", START_RUN, uri], stderr=subprocess.PIPE, text=True)
                 for _ in range(4)]
    errors = [p.communicate()[1] for p in processes]
    assert [p.returncode for p in processes] == [0] * 4, errors
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("race").experiment_id])
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)


def test_mlflow_run_train_entry_point(data_dir, tmp_path):
    uri = f"sqlite:///{tmp_path / 'project.db'}"
    params = {"task": "tiny", "data_dir": str(data_dir), "epochs": "2", "output": "crf", **SMALL_MODEL_PARAMS}
    summary = mlflow_run("train", params, "project", tmp_path, uri)

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("project").experiment_id])
    assert [r.info.run_id for r in runs] == [summary["run_id"]], "one run: kd logs into the project's run"
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["model_kind"] == "stm" and run.data.tags["output"] == "crf"
    assert run.data.metrics["test_f1"] == summary["test_f1"]
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 2
    assert "MLmodel" in {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "model")}

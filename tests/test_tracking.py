"""Tracking store creation under concurrency (the MLflow project entry points: tests/test_cli_experience.py)."""
from __future__ import annotations

import subprocess
import sys

from mlflow import MlflowClient

START_RUN = """
import sys
from kd.tracking.backend import open_client
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



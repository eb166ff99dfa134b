"""`kd plan run` end to end on the tiny plan of tests/test_plan.py (2 corpora, 2 seeds, STM, MTM,
a student per seed and a seed-ensemble student): on local worker processes, and on a real Dask
scheduler with two workers on loopback (CI's, from KD_TEST_DASK_ADDRESS, or one this module starts),
where one worker is SIGKILLed in the middle of a teacher. Then the plan runs again: every cell has
exactly one finished run, the killed cell's run was resumed (not restarted), and the report equals
the uninterrupted local run's."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kd.jobs.plan_runs import runs_by_cell, search_all
from tests.conftest import isolated_store, kill_while, make_corpora, subprocess_env
from tests.test_plan import resolved, tiny_plan, write_plan

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("plan-run")
    plan = tiny_plan(make_corpora(root / "corpora"))
    plan["teachers"]["mtm"]["epochs"] = 10  # long enough to be killed in the middle
    path = write_plan(root / "plan.yaml", plan)
    with isolated_store(root) as uri:
        yield root, path, plan, uri


@pytest.fixture(scope="module")
def dask_address(setup):
    """CI's cluster, or a scheduler and two single-threaded workers started here on loopback."""
    if os.environ.get("KD_TEST_DASK_ADDRESS"):
        yield os.environ["KD_TEST_DASK_ADDRESS"]
        return
    root = setup[0]
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    scheduler_file = root / "scheduler.json"
    logs = open(root / "dask.log", "w")
    processes = [subprocess.Popen([*dask, "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                   "--scheduler-file", str(scheduler_file)], stdout=logs, stderr=logs)]
    try:
        for deadline in _deadline(30):
            if scheduler_file.exists():
                break
        processes += [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file",
                                        str(scheduler_file), "--nworkers", "1", "--nthreads", "1", "--no-dashboard"],
                                       stdout=logs, stderr=logs) for _ in range(2)]
        address = json.loads(scheduler_file.read_text())["address"]
        from distributed import Client

        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        # The scheduler first: workers that lose it shut down at once instead of closing gracefully.
        for process in processes:
            process.terminate()
            process.wait(timeout=30)
        logs.close()


def _deadline(seconds: float):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        yield
        time.sleep(0.1)
    raise AssertionError(f"gave up after {seconds} s")


def kill_a_teacher_mid_run(client, experiment: str, process: subprocess.Popen) -> str:
    """SIGKILLs the worker process training a teacher once its second epoch is logged (so the first
    epoch's checkpoint is on disk); returns the run id."""
    for _ in _deadline(120):
        assert process.poll() is None, process.communicate()
        for run in search_all(client, experiment, "tags.plan_teacher = 'mtm' and attributes.status = 'RUNNING'"):
            if len(client.get_metric_history(run.info.run_id, "train_loss")) >= 2 and kill_while(
                    int(run.data.tags["kd.pid"]), lambda: client.get_run(run.info.run_id).info.status == "RUNNING"):
                return run.info.run_id


def run_in_process(*args) -> str:
    from click.testing import CliRunner

    from kd.cli.main import cli

    result = CliRunner().invoke(cli, ["plan", *map(str, args)])
    assert result.exit_code == 0, result.output[-3000:]
    return result.output


def report_means(root: Path, plan: dict, experiment: str) -> dict:
    """Table 1's cell means as `kd plan report` computes them (kd.jobs.plan_report.report_plan)."""
    from kd.jobs.plan_report import report_plan
    from kd.jobs.plan_runs import find_plan_run
    from kd.tracking.backend import open_client

    client = open_client(os.environ["MLFLOW_TRACKING_URI"])
    plan_resolved = resolved(root / "check", plan)
    plan_run = find_plan_run(client, experiment, plan_resolved.plan_id)
    results = report_plan(plan_resolved, client, experiment, plan_run.info.run_id, root / experiment, formats=("json",))
    assert [Path(a.path).name for a in client.list_artifacts(plan_run.info.run_id, "reports/table1")] != []
    return {corpus: {model: round(cell["mean"], 9) for model, cell in row.items()}
            for corpus, row in results["table1"]["cells"].items()}


def test_a_killed_worker_is_resumed_and_the_report_equals_an_uninterrupted_run(setup, dask_address):
    from kd.tracking.backend import open_client

    root, path, plan, uri = setup
    run_in_process("run", path, "--experiment", "local", "--workers", 2, "--threads", 1, "--no-report")

    process = subprocess.Popen([sys.executable, "-m", "kd", "plan", "run", str(path), "--experiment", "cluster",
                                "--cluster", dask_address, "--threads", "1", "--no-report"],
                               cwd=root, env=subprocess_env(uri), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    client = open_client(uri)
    killed = kill_a_teacher_mid_run(client, "cluster", process)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    assert "17 reused" in run_in_process("run", path, "--experiment", "cluster", "--cluster", dask_address,
                                         "--no-report")

    cells = resolved(root / "check", plan).cells
    runs = runs_by_cell(client, "cluster", cells)
    assert all([r.info.status for r in runs[c]] == ["FINISHED"] for c in cells), \
        {cells[c].label: [r.info.status for r in rs] for c, rs in runs.items() if len(rs) != 1}
    resumed = client.get_run(killed)
    assert resumed.info.status == "FINISHED" and "kd.failure" in resumed.data.tags  # the same run, finished
    assert resumed.data.metrics["epochs_trained"] == 10
    assert report_means(root, plan, "cluster") == report_means(root, plan, "local")


def test_sigterm_stops_the_plan_its_run_killed_and_a_rerun_finishes_it(setup):
    """SIGTERM (a batch scheduler's, `timeout`'s) used to kill `kd plan run` at once, leaving its plan
    run RUNNING in MLflow; now it ends like Ctrl-C: plan run KILLED, one line, exit 143, no traceback."""
    from kd.tracking.backend import open_client

    root, path, plan, uri = setup
    process = subprocess.Popen([sys.executable, "-m", "kd", "plan", "run", str(path), "--experiment", "stopped",
                                "--workers", "2", "--threads", "1", "--no-report"], cwd=root,
                               env=subprocess_env(uri), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = open_client(uri)
    for _ in _deadline(120):  # once a teacher is training (its second epoch logged), SIGTERM to kd itself
        assert process.poll() is None, process.communicate()
        teachers = search_all(client, "stopped", "tags.plan_teacher = 'mtm' and attributes.status = 'RUNNING'")
        if any(len(client.get_metric_history(r.info.run_id, "train_loss")) >= 2 for r in teachers):
            process.send_signal(signal.SIGTERM)
            break
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-3000:]
    assert stderr.strip().splitlines()[-1].startswith("SIGTERM: stopped; the plan run is marked KILLED. Running "
                                                      "the same `kd plan run` again continues it")
    assert "Traceback" not in stderr
    plan_runs = search_all(client, "stopped", "tags.model_kind = 'plan'")
    assert [r.info.status for r in plan_runs] == ["KILLED"], [r.info.status for r in plan_runs]

    run_in_process("run", path, "--experiment", "stopped", "--workers", 2, "--threads", 1, "--no-report")
    cells = resolved(root / "check-stopped", plan).cells
    runs = runs_by_cell(client, "stopped", cells)
    assert all(runs[c] and runs[c][-1].info.status == "FINISHED" for c in cells)
    assert client.get_run(plan_runs[0].info.run_id).info.status == "FINISHED"  # the same plan run, finished

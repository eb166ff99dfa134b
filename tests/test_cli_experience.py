"""End to end, what a user sees of real runs (issue 15): the run line and live progress, the logged
model in MLflow, Ctrl-C and SIGTERM, `kd tune --set`, and every MLproject entry point run by
`mlflow run` with only KD_DATA_DIR set, from a folder of the user's."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from kd.cli.main import cli
from tests.conftest import (REPO, SMALL_MODEL, SMALL_MODEL_PARAMS, isolated_store, make_corpora,
                            subprocess_env)

pytestmark = pytest.mark.slow
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
TINY = [*SMALL_MODEL, "--batch-size", "16", "--learning-rate", "0.02", "--threads", "1"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("experience")
    data_dir = make_corpora(root / "corpora")
    with isolated_store(root) as uri:
        from mlflow import MlflowClient

        yield root, data_dir, uri, MlflowClient(uri)


def test_train_shows_its_run_and_progress_and_logs_a_model(world):
    root, data_dir, uri, client = world
    result = CliRunner().invoke(cli, ["train", "--task", "tiny", "--data-dir", str(data_dir), "--epochs", "2",
                                      "--train-splits", "train", *TINY, "--progress", "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    run_id = json.loads(result.stdout.strip().splitlines()[-1])["run_id"]
    stderr = ANSI.sub("", result.stderr)
    assert stderr.lstrip().startswith(f"run {run_id} (")
    assert "#/experiments/" in stderr and f"/runs/{run_id}?workflowType=machine_learning" in stderr
    # The last frame: after epoch 2 of 2 the epoch bar says what the run does next (issue 26).
    assert "scoring, logging" in stderr and "tok/s" in stderr and "devel F1" in stderr

    run = client.get_run(run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    models = client.search_logged_models([experiment.experiment_id], filter_string="name = 'model'")
    [model] = [m for m in models if m.source_run_id == run_id]
    assert [output.model_id for output in run.outputs.model_outputs] == [model.model_id]

    import mlflow.pyfunc
    import pandas as pd

    loaded = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    assert [str(column) for column in loaded.metadata.signature.inputs.input_names()] == ["tokens", "text"]
    assert loaded.metadata.saved_input_example_info is not None
    tags = loaded.predict(pd.DataFrame({"tokens": [["aspirin", "for", "fever"]]}))
    assert len(tags) == 1 and len(tags[0]) == 3


# Far more epochs than the test waits for: the signal comes after the first epoch's checkpoint; with
# 200 the tiny run once finished all of them first on a loaded 2-core machine (the signal came too late).
def start_training(data_dir: Path, cwd: Path, uri: str, epochs: int = 100_000) -> subprocess.Popen:
    command = [sys.executable, "-m", "kd", "train", "--task", "tiny", "--data-dir", str(data_dir), "--epochs",
               str(epochs), *TINY, "--experiment", "stopped", "--progress", "--json"]
    # SIGINT back to its default in the child, as a terminal's Ctrl-C finds it: a test suite started in
    # the background (`nohup pytest &`) passes SIGINT on ignored, and Python then never raises
    # KeyboardInterrupt (the SIGINT case timed out that way).
    return subprocess.Popen(command, cwd=cwd, env={**subprocess_env(uri), "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


@pytest.mark.parametrize("signal_number, exit_code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_the_run_cleanly_and_says_how_to_resume(world, signal_number, exit_code):
    root, data_dir, uri, client = world
    process = start_training(data_dir, root, uri)
    first = process.stderr.readline()  # `run RUN_ID (...)`, printed as soon as the run exists
    run_id = first.split()[1]
    deadline = time.monotonic() + 120
    while not client.get_metric_history(run_id, "train_loss") and time.monotonic() < deadline:
        time.sleep(0.2)  # an epoch has ended: its checkpoint is written
    process.send_signal(signal_number)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == exit_code, stderr
    assert "Traceback" not in stderr
    assert f"kd train --resume {run_id}" in stderr
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert Path(run.data.tags["checkpoint"]).is_file(), "the checkpoint stays for --resume"


def test_tune_set_names_the_objective_and_ends_the_parent_run(tmp_path, shared_teachers):
    import optuna

    space = tmp_path / "space.yaml"
    space.write_text("fixed: {loss: logits, epochs: 4, word_dim: 16, char_dim: 8, char_hidden: 8, "
                     "shared_hidden: 16, task_hidden: 16, hidden_dim: 16, batch_size: 16}\n"
                     "params:\n  alpha: {type: float, low: 0.0, high: 1.0}\n")
    with shared_teachers.open_copy(tmp_path) as uri:
        from mlflow import MlflowClient

        result = CliRunner().invoke(cli, ["tune", "--task", "tiny", "--cache", shared_teachers.stm_cache,
                                          "--space", str(space), "--set", "epochs=1", "--n-trials", "2",
                                          "--data-dir", str(shared_teachers.data_dir), "--threads", "1", "--json"],
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert "Warning" not in result.stderr, result.stderr
        summary = json.loads(result.stdout.strip().splitlines()[-1])
        assert summary["study"] == "tiny-space-epochs1" and summary["finished_trials"] == 2
        client = MlflowClient(uri)
        parent = client.get_run(summary["parent_run_id"])
        assert parent.info.status == "FINISHED"
        trials = client.search_runs([parent.info.experiment_id],
                                    filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
        assert len(trials) == 2 and {t.data.params["epochs"] for t in trials} == {"1"}
        study = optuna.load_study(study_name="tiny-space-epochs1", storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(tmp_path / "kd-optuna.log"))))
        assert study.metric_names == ["devel_f1"]


# ----------------------------------------------------------------- mlflow run, every entry point


def mlflow_run(entry_point: str, params: dict, cwd: Path, uri: str, env: dict[str, str],
               experiment: str | None = None) -> dict:
    command = [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", entry_point, "--env-manager", "local",
               *(["--experiment-name", experiment] if experiment else [])]
    for key, value in params.items():
        command += ["-P", f"{key}={value}"]
    result = subprocess.run(command, cwd=cwd, env={**subprocess_env(uri), **env}, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_every_entry_point_runs_from_a_users_folder_with_only_kd_data_dir(tmp_path):
    """The chain a user runs: teacher, cache, student, tune, compare (and an STM), each through
    `mlflow run` with no data_dir parameter, from a folder that is not the project; integers given
    as `1.0`. Runs land in experiment `kd` (no --experiment-name), outputs in the user's folder."""
    user = tmp_path / "work"
    user.mkdir()
    data_dir = make_corpora(tmp_path / "corpora")
    uri = f"sqlite:///{user / 'mlflow.db'}"
    env = {"KD_DATA_DIR": str(data_dir)}
    small = {**SMALL_MODEL_PARAMS, "epochs": "1.0", "batch_size": "16.0", "threads": "1"}
    stm = mlflow_run("train", {"task": "tiny", "output": "crf", **small}, user, uri, env)
    teacher = mlflow_run("train_teacher", {"tasks": "tiny,other", "sampling": "proportional", **small}, user, uri, env)
    cache = mlflow_run("cache_logits", {"teacher": teacher["run_id"], "layers": "logits,marginals", "threads": "1"},
                       user, uri, env)
    student = mlflow_run("distill", {"task": "tiny", "cache": cache["run_id"], "loss": "soft", "tau": "2", **small},
                         user, uri, env, experiment="kd")
    space = user / "space.yaml"
    space.write_text("fixed: {loss: logits, epochs: 2, word_dim: 16, char_dim: 8, char_hidden: 8, shared_hidden: 16, "
                     "task_hidden: 16, hidden_dim: 16}\nparams:\n  alpha: {type: float, low: 0.0, high: 1.0}\n")
    tuned = mlflow_run("tune", {"task": "tiny", "cache": cache["run_id"], "space": "space.yaml", "n_trials": "1.0",
                                "threads": "1", "set": "epochs=1"}, user, uri, env)
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    # The Friedman test needs 3 models on 2 corpora: scores logged directly stand in for 12 trainings.
    scores = client.create_experiment("scores")
    for index, (model, corpus, seed) in enumerate((m, c, s) for m in "ABC" for c in ("tiny", "other") for s in (1, 2)):
        run = client.create_run(scores, tags={"model": model, "task": corpus, "seed": str(seed)})
        client.log_metric(run.info.run_id, "test_f1", 0.5 + 0.1 * "ABC".index(model) + 0.01 * index)
        client.set_terminated(run.info.run_id)
    compared = mlflow_run("compare", {"experiment": "scores", "bayesian": "0", "model_key": "tags.model"},
                          user, uri, env)
    kd_experiment = client.get_experiment_by_name("kd").experiment_id
    for summary in (stm, teacher, cache, student):
        run = client.get_run(summary["run_id"])
        assert run.info.experiment_id == kd_experiment and run.info.status == "FINISHED"
        assert "''" not in run.data.params.values(), "an empty string logged as ''"
    assert client.get_run(stm["run_id"]).data.params["epochs"] in ("1", "1.0")
    # With --experiment-name kd, kd logged into the project's own run; without, into a run of its own.
    assert client.get_run(student["run_id"]).data.tags.get("mlflow.source.type") == "PROJECT"
    default_runs = client.search_runs(["0"], filter_string="tags.`kd.run_id` = '{}'".format(stm["run_id"]))
    assert len(default_runs) == 1, "the project run in Default points to kd's run"
    assert client.get_run(tuned["parent_run_id"]).info.experiment_id == kd_experiment
    # -P set=epochs=1, undeclared, reaches kd tune as --set epochs=1: the trial trains 1 epoch, not the space's 2.
    trials = client.search_runs([kd_experiment], f"tags.`mlflow.parentRunId` = '{tuned['parent_run_id']}'")
    assert tuned["study"].endswith("-epochs1") and [t.data.params["epochs"] for t in trials] == ["1"]
    assert (user / "kd-optuna.log").is_file() and not (REPO / "kd-optuna.log").exists()
    check_entry_point_runs(client, uri, stm, teacher, cache, student)
    table = Path(compared["files"]["md"])
    table = table if table.is_absolute() else user / table
    assert table.is_file() and table.resolve().is_relative_to(user / "comparison")


def check_entry_point_runs(client, uri: str, stm: dict, teacher: dict, cache: dict, student: dict) -> None:
    """What each entry point's run records: the options it was given, its metrics, its model or cache."""
    from kd.cache.build import open_cache_run
    from kd.tracking.logged_models import logged_model_location

    for summary, kind in ((stm, "stm"), (teacher, "mtm")):
        run = client.get_run(summary["run_id"])
        assert run.data.tags["model_kind"] == kind and run.data.metrics["test_f1"] == summary["test_f1"]
        assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 1
        assert (Path(logged_model_location(uri, run.info.run_id)) / "MLmodel").is_file(), "a logged model"
    assert client.get_run(stm["run_id"]).data.tags["output"] == "crf"
    run = client.get_run(teacher["run_id"])
    assert run.data.tags["task"] == "tiny,other" and run.data.params["sampling"] == "proportional"
    for name in ("tiny/test_f1", "other/test_f1", "other/test_precision", "tiny/test_recall"):
        assert run.data.metrics[name] == teacher[name]
    run = client.get_run(cache["run_id"])
    assert run.data.tags["model_kind"] == "cache" and run.data.tags["teacher_runs"] == teacher["run_id"]
    reader, _ = open_cache_run(run.info.run_id, client, uri)
    assert reader.manifest.layers == ["logits", "marginals"] and list(reader.manifest.tasks) == ["tiny", "other"]
    run = client.get_run(student["run_id"])
    assert run.data.params["cache_run"] == cache["run_id"] and run.data.params["loss"] == "soft"
    # The run records the beta it trained with (1 - alpha), not the entry point's "-1 means default"
    # sentinel, which `mlflow run` logs before kd can log the effective value.
    assert float(run.data.params["beta"]) == pytest.approx(0.5) and float(run.data.params["tau"]) == 2.0


def test_the_plan_entry_point_runs_from_a_users_folder_with_only_kd_data_dir(tmp_path):
    """`mlflow run . -e plan` with a plan file of the user's that names no data folder: the corpora
    come from KD_DATA_DIR, the cells and the plan run land in experiment `kd` of the user's store."""
    user = tmp_path / "work"
    user.mkdir()
    data_dir = make_corpora(tmp_path / "corpora")
    uri = f"sqlite:///{user / 'mlflow.db'}"
    (user / "plan.yaml").write_text(
        "name: entry\ncorpora: [tiny, other]\nseeds: [1]\nsubsample: {train: 40}\n"
        "defaults: {epochs: 1, train_splits: [train], word_dim: 16, char_dim: 8, char_hidden: 8, shared_hidden: 16,"
        " task_hidden: 16, hidden_dim: 16}\nteachers: {mtm: {epochs: 1}}\n"
        "models: {STM: {kind: stm}, STM_crf: {kind: stm, output: crf}, MTM: {kind: teacher, teacher: mtm}}\n"
        "tables: {table1: {title: Entry, models: [STM, STM_crf, MTM], bayesian: 0}}\n")
    command = [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "plan", "--env-manager", "local",
               "-P", "plan=plan.yaml", "-P", "workers=1.0", "-P", "threads=1"]
    result = subprocess.run(command, cwd=user, env={**subprocess_env(uri), "KD_DATA_DIR": str(data_dir)},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("kd").experiment_id])
    cells = [r for r in runs if r.data.tags.get("cell")]
    assert sorted(r.data.tags["model_kind"] for r in cells) == ["mtm", "stm", "stm", "stm", "stm"]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert [r.data.tags.get("model_kind") for r in runs].count("plan") == 1

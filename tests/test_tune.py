"""`kd tune` end to end: a small teacher and its cache (made once for the module), then studies
whose trials are students trained on `tiny`: nesting and logging in MLflow, the global trial
budget, pruning, refits, resuming after a killed worker (and sampling new values when a study is
continued), and two workers sharing a PostgreSQL study (the PostgreSQL tests are skipped unless
KD_TEST_POSTGRES_URL is set; CI sets it with .ci/start_postgres.sh). Torch runs one thread here:
the models are tiny, and two threads are several times slower on a busy 2-core machine."""
from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import torch
from mlflow import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from kd.data.conll import read_conll
from kd.errors import KdError
from kd.statistics.compare import RunRecord, default_model_name
from tests.conftest import SMALL_MODEL, isolated_store, kill_while, make_corpora, run_kd, subprocess_env

optuna.logging.set_verbosity(optuna.logging.WARNING)

TRAINING = ["--batch-size", "16", "--learning-rate", "0.02"]
# Student sizes as small as the teacher's; a learning rate and dropout that give a non-zero devel F1
# after one epoch of the tiny corpus, so trials differ and the pruner has something to compare.
FAST_FIXED = ("loss: logits, word_dim: 16, char_dim: 8, char_hidden: 8, shared_hidden: 16, task_hidden: 16, "
              "hidden_dim: 16, batch_size: 16, learning_rate: 0.05, dropout: 0.1")
SPACE = "fixed: {{{fixed}, epochs: {epochs}}}\nparams:\n  alpha: {{type: float, low: 0.0, high: 1.0}}\n"




@dataclass
class World:
    root: Path
    data_dir: Path
    uri: str
    teacher: str
    cache: str
    space: Path  # 2 epochs
    space3: Path  # 3 epochs

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(self.uri)

    def tune_args(self, *extra, task: str = "tiny", space: Path | None = None, data_dir: Path | None = None,
                  cache: str | None = None) -> list[str]:
        return ["tune", "--task", task, "--cache", cache or self.cache, "--space", space or self.space,
                "--data-dir", data_dir or self.data_dir, "--json", *extra]


def make_teacher_and_cache(data_dir: Path, experiment: str = "kd") -> tuple[str, str]:
    teacher = run_kd("train-teacher", "--tasks", "tiny,other", "--data-dir", data_dir, *SMALL_MODEL, "--epochs", "1",
                     *TRAINING, "--experiment", experiment, "--json")
    cache = run_kd("cache-logits", "--teacher", teacher["run_id"], "--data-dir", data_dir, "--experiment", experiment,
                   "--json")
    return teacher["run_id"], cache["run_id"]




@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The models are tiny: one torch thread is several times faster than two on a busy 2-core
    machine. Subprocesses get `--threads 1`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    data_dir = make_corpora(root / "corpora")
    with isolated_store(root) as uri:
        teacher, cache = make_teacher_and_cache(data_dir)
        space = root / "fast.yaml"
        space.write_text(SPACE.format(fixed=FAST_FIXED, epochs=2))
        space3 = root / "fast3.yaml"
        space3.write_text(SPACE.format(fixed=FAST_FIXED, epochs=3))
        yield World(root=root, data_dir=data_dir, uri=uri, teacher=teacher, cache=cache, space=space, space3=space3)


def journal(path: Path) -> JournalStorage:
    return JournalStorage(JournalFileBackend(str(path)))


def experiment_runs(client: MlflowClient, experiment: str) -> list:
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id], max_results=1000)


def trial_runs(client: MlflowClient, experiment: str, parent_id: str | None = None) -> list:
    return [r for r in experiment_runs(client, experiment) if r.data.tags.get("tuning") == "trial"
            and (parent_id is None or r.data.tags.get("mlflow.parentRunId") == parent_id)]


def devel_steps(client: MlflowClient, run_id: str) -> list[int]:
    """The epochs with a devel F1 point (the final value is logged again at the last epoch)."""
    return sorted({m.step for m in client.get_metric_history(run_id, "devel_f1")})


def states(study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


# --- 1. a search: nesting, logging, the budget, test never read ------------------------------------


@pytest.mark.slow  # trains a teacher (the module's world) and students
def test_search_logs_trials_under_one_parent_and_never_reads_test(world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data_dir = tmp_path / "corpora"
    shutil.copytree(world.data_dir, data_dir)
    broken = data_dir / "tiny" / "test.tsv"
    broken.write_text("aspirin\tB-Chemical\nx\n\nfever\tNOT-A-TAG\n")
    with pytest.raises(KdError):
        read_conll(broken)  # any read of test would stop the search

    args = world.tune_args("--n-trials", "3", "--pruner", "none", "--study", "search", "--experiment", "search",
                           data_dir=data_dir)
    result = run_kd(*args)
    assert result["finished_trials"] == 3 and result["study"] == "search"
    journal_path = (tmp_path / "kd-optuna.log").resolve()
    assert result["storage"] == str(journal_path), "the default storage is ./kd-optuna.log"
    study = optuna.load_study(study_name="search", storage=journal(journal_path))
    assert states(study) == {"COMPLETE": 3}
    assert result["best_value"] == study.best_value and result["best_params"] == study.best_params

    client = world.client
    parent_id = result["parent_run_id"]
    runs = experiment_runs(client, "search")
    parents = [r for r in runs if r.data.tags.get("model_kind") == "study"]
    assert [r.info.run_id for r in parents] == [parent_id], "one parent run for the study"
    assert all(r.data.tags.get("mlflow.parentRunId") == parent_id for r in runs if r.info.run_id != parent_id)
    parent = client.get_run(parent_id)
    tags = parent.data.tags
    assert tags["study"] == "search" and tags["storage"] == str(journal_path) and tags["search_space"] == "fast"
    best = study.best_trial
    assert tags["best.alpha"] == str(best.params["alpha"]) and tags["best_trial"] == str(best.number)
    assert tags["finished_trials"] == "3"
    assert parent.data.metrics["best_devel_f1"] == pytest.approx(study.best_value)
    assert {a.path for a in client.list_artifacts(parent_id)} >= {"best.json", "plots", "search_space.json"}
    assert "plots/optimization_history.png" in {a.path for a in client.list_artifacts(parent_id, "plots")}
    best_json = json.loads(Path(client.download_artifacts(parent_id, "best.json", str(tmp_path))).read_text())
    assert best_json["best_trial"] == best.number and best_json["best_params"] == best.params

    trials = {t.number: t for t in study.trials}
    children = trial_runs(client, "search", parent_id)
    assert len(children) == 3
    for run in children:
        trial = trials[int(run.data.tags["trial_number"])]
        assert trial.user_attrs["mlflow_run_id"] == run.info.run_id
        assert run.info.status == "FINISHED"
        assert run.data.tags["study"] == "search" and run.data.tags["trial_state"] == "COMPLETE"
        assert run.data.tags["model_kind"] == "student" and run.data.tags["cache_run"] == world.cache
        assert float(run.data.params["alpha"]) == pytest.approx(trial.params["alpha"])
        assert run.data.params["train_splits"] == "train" and run.data.params["eval_split"] == "devel"
        assert run.data.params["epochs"] == "2" and run.data.params["loss"] == "logits"
        assert devel_steps(client, run.info.run_id) == [1, 2], "a devel F1 point per epoch"
        assert run.data.metrics["devel_f1"] == pytest.approx(trial.value)
        assert sorted(trial.intermediate_values) == [1, 2]
        assert not [m for m in run.data.metrics if m.startswith("test_")], "a trial never scores test"
    assert len({r.data.params["alpha"] for r in children}) == 3, "the sampler tried different values"
    assert study.best_value > 0, "the fixed options let a student learn the tiny corpus in two epochs"

    # The budget is global: the same study with the same budget runs nothing more ...
    again = run_kd(*args)
    assert again["finished_trials"] == 3 and again["parent_run_id"] == parent_id
    assert len(optuna.load_study(study_name="search", storage=journal(journal_path)).trials) == 3
    assert len(trial_runs(client, "search")) == 3
    # ... and a larger budget runs exactly the missing trial.
    more = run_kd(*[a if a != "3" else "4" for a in args])
    assert more["finished_trials"] == 4 and more["parent_run_id"] == parent_id
    assert states(optuna.load_study(study_name="search", storage=journal(journal_path))) == {"COMPLETE": 4}
    children = trial_runs(client, "search")
    assert len(children) == 4 and {r.data.tags["mlflow.parentRunId"] for r in children} == {parent_id}
    assert sorted(int(r.data.tags["trial_number"]) for r in children) == [0, 1, 2, 3]
    assert [r.info.run_id for r in experiment_runs(client, "search") if r.data.tags.get("model_kind") == "study"] \
        == [parent_id]
    assert client.get_run(parent_id).data.tags["finished_trials"] == "4"


# --- 2. pruning ----------------------------------------------------------------------------------


@pytest.mark.slow  # trains a teacher (the module's world) and students
def test_pruned_trials_are_pruned_in_optuna_and_mlflow(world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # Made deterministic: three identical hard-label students (alpha = 1) learn the corpus within
    # the first epochs; then students that only imitate a one-epoch teacher (alpha = 0) still score
    # 0, below the median, and are pruned.
    study = optuna.create_study(study_name="prune", storage=journal(tmp_path / "kd-optuna.log"),
                                direction="maximize")
    for alpha in (1.0, 1.0, 1.0, 0.0, 0.0, 1.0):
        study.enqueue_trial({"alpha": alpha})
    result = run_kd(*world.tune_args("--n-trials", "6", "--pruner", "median", "--study", "prune",
                                     "--experiment", "prune", space=world.space3))
    assert result["finished_trials"] == 6
    study = optuna.load_study(study_name="prune", storage=journal(tmp_path / "kd-optuna.log"))
    assert set(states(study)) <= {"COMPLETE", "PRUNED"} and len(study.trials) == 6
    client = world.client
    runs = {r.info.run_id: r for r in trial_runs(client, "prune", result["parent_run_id"])}
    assert len(runs) == 6
    for trial in study.trials:
        run = runs[trial.user_attrs["mlflow_run_id"]]
        steps = devel_steps(client, run.info.run_id)
        assert sorted(trial.intermediate_values) == steps
        assert run.data.tags["trial_state"] == trial.state.name
        assert run.info.status == "FINISHED"
        if trial.state == TrialState.PRUNED:
            assert len(steps) < 3 and run.data.metrics["epochs_trained"] == len(steps)
        else:
            assert steps == [1, 2, 3] and run.data.metrics["epochs_trained"] == 3
    assert {r.data.tags["trial_state"] for r in runs.values()} <= {"COMPLETE", "PRUNED"}
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert [t.number for t in pruned] == [3, 4], [(t.number, t.params, t.intermediate_values) for t in study.trials]
    for trial in pruned:  # stopped at an epoch where it was below the median of the finished trials
        assert trial.params["alpha"] == 0.0
        epoch = max(trial.intermediate_values)
        finished = [t.intermediate_values[epoch] for t in study.trials[:trial.number] if t.state == TrialState.COMPLETE]
        assert trial.intermediate_values[epoch] < statistics.median(finished)
    assert study.trials[5].state == TrialState.COMPLETE, "a good student after pruned ones is not pruned"
    parent = client.get_run(result["parent_run_id"])
    assert parent.data.metrics["trials_pruned"] == 2 and parent.data.metrics["trials_complete"] == 4


# --- 3. refits -----------------------------------------------------------------------------------


@pytest.mark.slow  # trains a teacher (the module's world) and students
def test_refit_makes_tuned_runs_once_and_compare_groups_them_as_one_model(world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    client = world.client
    results = {}
    for task, n_trials in (("tiny", 2), ("other", 1)):
        results[task] = run_kd(*world.tune_args("--n-trials", str(n_trials), "--pruner", "none", "--refit-seeds", "2",
                                                "--study", f"refit-{task}", "--experiment", "refit", task=task))
    tuned = [r for r in experiment_runs(client, "refit") if r.data.tags.get("model_kind") == "tuned"]
    assert len(tuned) == 4
    for task, result in results.items():
        study = optuna.load_study(study_name=f"refit-{task}", storage=journal(tmp_path / "kd-optuna.log"))
        mine = [r for r in tuned if r.data.tags["task"] == task]
        assert sorted(r.data.tags["seed"] for r in mine) == ["1", "2"]
        assert sorted(r.info.run_id for r in mine) == sorted(result["refit"]["run_ids"])
        assert result["refit"]["seeds"] == 2
        for run in mine:
            assert run.info.status == "FINISHED"
            assert run.data.tags["study"] == f"refit-{task}" and run.data.tags["best_trial"] == str(study.best_trial.number)
            assert run.data.tags["mlflow.parentRunId"] == result["parent_run_id"]
            assert run.data.params["train_splits"] == "train,devel" and run.data.params["eval_split"] == "test"
            assert float(run.data.params["alpha"]) == pytest.approx(study.best_params["alpha"])
            assert 0 <= run.data.metrics["test_f1"] <= 1
        scores = [r.data.metrics["test_f1"] for r in mine]
        assert result["refit"]["test_f1_mean"] == pytest.approx(sum(scores) / 2)
        assert client.get_run(result["parent_run_id"]).data.metrics["refit_test_f1_mean"] == pytest.approx(sum(scores) / 2)

    # Rerunning reuses the refits.
    again = run_kd(*world.tune_args("--n-trials", "2", "--pruner", "none", "--refit-seeds", "2", "--study", "refit-tiny",
                                    "--experiment", "refit"))
    assert sorted(again["refit"]["run_ids"]) == sorted(results["tiny"]["refit"]["run_ids"])
    assert len([r for r in experiment_runs(client, "refit") if r.data.tags.get("model_kind") == "tuned"]) == 4

    # Tuned weights differ per corpus, yet `kd compare` groups the tuned runs as one model.
    names = {default_model_name(RunRecord(r.info.run_id, dict(r.data.tags), dict(r.data.params), dict(r.data.metrics)))
             for r in tuned}
    assert len(names) == 1, names
    experiment_id = client.get_experiment_by_name("refit").experiment_id
    for task in ("tiny", "other"):  # two more models, so that there is something to compare
        for seed, (kind, f1) in enumerate([("stm", 0.5), ("student", 0.6)] * 2):
            run = client.create_run(experiment_id, tags={"task": task, "model_kind": kind, "output": "softmax",
                                                         "seed": str(seed), **({"loss": "logits"} if kind == "student"
                                                                               else {})})
            client.log_param(run.info.run_id, "alpha", "0.5")
            client.log_metric(run.info.run_id, "test_f1", f1 + 0.01 * seed)
            client.set_terminated(run.info.run_id)
    compared = run_kd("compare", "--experiment", "refit", "--no-log", "--out", tmp_path / "comparison", "--json")
    tuned_models = [m for m in compared["models"] if m.startswith("tuned")]
    # Grouped by model_id (one for every refit of the study), labelled by the model_name tag.
    assert tuned_models == sorted({r.data.tags["model_name"] for r in tuned}), compared["models"]
    assert sorted(compared["corpora"]) == ["other", "tiny"] and len(compared["models"]) == 3


@pytest.mark.slow  # trains a teacher (the module's world) and students
def test_a_resumed_study_does_not_sample_the_same_values_again(world, tmp_path, monkeypatch):
    """A study continued by a new `kd tune` process (after a kill, or with a larger --n-trials)
    must go on exploring, not replay the values it has already tried. Training is replaced by a
    quick stand-in: only the sampling is under test."""
    import kd.tuning.study as study_module
    from kd.tracking.runs import TrackedRun
    from kd.tracking.backend import open_client
    from kd.training.tagger_job import RunSummary

    def stand_in(student, client, checkpoint_dir, *, hooks, placement, **_):
        run = TrackedRun.start(client, student.experiment, None, dict(placement.tags or {}),
                               parent_run_id=placement.parent_run_id)
        hooks.on_start(run.run_id)
        f1 = 1 - (student.distill.alpha - 0.3) ** 2
        for epoch in (1, 2):
            run.log_metrics({"devel_f1": f1 * epoch / 2}, step=epoch)
            if hooks.on_epoch(epoch, {"devel_f1": f1 * epoch / 2}):
                break
        run.finish()
        return RunSummary(run.run_id, {"devel_f1": f1})

    monkeypatch.setattr(study_module, "run_tagger_job", stand_in)
    monkeypatch.chdir(tmp_path)
    client = open_client(world.uri)
    common = dict(task="tiny", cache_run=world.cache, space=str(world.space), pruner="none", study="resample",
                  experiment="resample", data_dir=str(world.data_dir))
    study_module.tune(study_module.TuneJob(n_trials=3, **common), client, tmp_path / "checkpoints")
    study_module.tune(study_module.TuneJob(n_trials=6, **common), client, tmp_path / "checkpoints")
    study = optuna.load_study(study_name="resample", storage=journal(tmp_path / "kd-optuna.log"))
    alphas = [t.params["alpha"] for t in study.trials]
    assert states(study) == {"COMPLETE": 6}
    assert len(set(alphas[:3])) == 3
    assert len(set(alphas)) == 6, (
        f"the second process replayed the first one's values {alphas}: kd.tuning.study.tune seeds the sampler "
        "with --seed alone for a journal storage, so every process draws the same sequence")


# --- 4. a killed worker --------------------------------------------------------------------------


@pytest.mark.slow  # trains a teacher (the module's world) and students
def test_a_killed_worker_is_resumed_without_losing_or_repeating_trials(world, tmp_path):
    storage_path = tmp_path / "journal" / "study.log"
    command = [sys.executable, "-m", "kd", *world.tune_args("--n-trials", "4", "--pruner", "none", "--study", "resume",
                                                            "--experiment", "resume", "--storage", storage_path,
                                                            "--threads", "1")]
    command = [str(part) for part in command]
    env = subprocess_env(world.uri)
    with open(tmp_path / "first.err", "w") as err:
        worker = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        killed = None
        for _ in range(20):  # a trial may finish between being seen and the kill: then the next one
            running = wait_for_running_trial(worker, storage_path, "resume", timeout=240)
            if kill_while(worker.pid, lambda: trial_state(storage_path, "resume", running.number) == TrialState.RUNNING
                          and world.client.get_run(running.user_attrs["mlflow_run_id"]).info.status == "RUNNING"):
                killed = running
                break
        assert killed is not None, "every running trial seen finished before the worker was stopped"
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.wait()
    assert worker.returncode == -signal.SIGKILL, (tmp_path / "first.err").read_text()[-3000:]
    before = optuna.load_study(study_name="resume", storage=journal(storage_path))
    completed_before = {t.number: t.params for t in before.trials if t.state == TrialState.COMPLETE}
    assert before.trials[killed.number].state == TrialState.RUNNING
    assert world.client.get_run(killed.user_attrs["mlflow_run_id"]).info.status == "RUNNING"

    second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"re-queued trials abandoned by dead workers: {killed.number}" in second.stderr
    result = json.loads(second.stdout.strip().splitlines()[-1])
    assert result["finished_trials"] == 4

    study = optuna.load_study(study_name="resume", storage=journal(storage_path))
    assert states(study) == {"COMPLETE": 4, "FAIL": 1}, [(t.number, t.state, t.user_attrs) for t in study.trials]
    assert study.trials[killed.number].state == TrialState.FAIL
    retries = [t for t in study.trials if t.user_attrs.get("retry_of") == killed.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == killed.params, "the abandoned trial is retried with the same parameters"
    for number, params in completed_before.items():  # completed trials are neither lost nor repeated
        assert study.trials[number].state == TrialState.COMPLETE and study.trials[number].params == params

    client = world.client
    killed_run = client.get_run(killed.user_attrs["mlflow_run_id"])
    assert killed_run.info.status == "KILLED", "the killed trial's run is not left RUNNING"
    runs = trial_runs(client, "resume", result["parent_run_id"])
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert sorted(r.info.run_id for r in finished) == sorted(
        t.user_attrs["mlflow_run_id"] for t in study.trials if t.state == TrialState.COMPLETE)
    assert all(r.data.tags["trial_state"] == "COMPLETE" for r in finished)
    assert {r.info.status for r in runs} == {"FINISHED", "KILLED"} and len(runs) == 5


def trial_state(storage_path: Path, study_name: str, number: int) -> TrialState:
    return optuna.load_study(study_name=study_name, storage=journal(storage_path)).trials[number].state


def wait_for_running_trial(worker: subprocess.Popen, storage_path: Path, study_name: str, timeout: float):
    """Polls the journal until the study has a complete trial and a running one whose MLflow run
    exists; returns the running trial."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            pytest.fail(f"the worker exited ({worker.returncode}) before it could be killed mid-trial")
        if storage_path.exists():
            try:
                study = optuna.load_study(study_name=study_name, storage=journal(storage_path))
            except Exception:  # the study is not created yet, or a line is half written
                study = None
            if study is not None:
                trials = study.get_trials(deepcopy=True)
                running = [t for t in trials if t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs]
                if running and any(t.state == TrialState.COMPLETE for t in trials):
                    return running[0]
        time.sleep(0.2)
    pytest.fail("no trial was seen running after a completed one")


# --- 5. two workers on PostgreSQL ------------------------------------------------------------------


def with_installed_driver(url: str) -> str:
    """The URL with a PostgreSQL driver that is installed (SQLAlchemy 2.1 maps a plain
    `postgresql://` to psycopg 3, which kd's postgres and test extras install)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        try:
            parsed.get_dialect().import_dbapi()
        except ImportError:
            parsed = parsed.set(drivername="postgresql+psycopg2")
    return parsed.render_as_string(hide_password=False)


@pytest.fixture
def postgres_databases():
    """Fresh databases (optuna, mlflow) on the test server, as plain `postgresql://` URLs,
    dropped afterwards."""
    base = os.environ.get("KD_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("KD_TEST_POSTGRES_URL is not set (start a server with .ci/start_postgres.sh)")
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(base).set(drivername="postgresql")
    suffix = uuid.uuid4().hex[:12]
    names = {"optuna": f"kd_test_optuna_{suffix}", "mlflow": f"kd_test_mlflow_{suffix}"}
    admin = psycopg.connect(url.set(database="kd_optuna").render_as_string(hide_password=False), autocommit=True)
    try:
        with admin.cursor() as cursor:
            for name in names.values():
                cursor.execute(f'CREATE DATABASE "{name}"')
        yield {kind: url.set(database=name).render_as_string(hide_password=False) for kind, name in names.items()}
    finally:
        with admin.cursor() as cursor:
            for name in names.values():
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_the_documented_postgresql_url_works(postgres_databases):
    """README: `--storage postgresql://user@db/optuna` (and a PostgreSQL MLflow store) with kd's
    declared dependencies (`pip install -e .[postgres]`, also in the test extra): SQLAlchemy >= 2.1
    resolves a plain `postgresql://` URL to psycopg 3."""
    from kd.tracking.backend import open_client
    from kd.tuning.storage import open_storage

    try:
        storage = open_storage(postgres_databases["optuna"], attempts=1)
    except KdError as error:
        pytest.fail(f"kd cannot open the documented storage URL: {error}")
    storage.engine.dispose()
    try:
        open_client(postgres_databases["mlflow"]).search_experiments(max_results=1)
    except ImportError as error:
        pytest.fail(f"an MLflow store on the documented URL fails: {error!r}")


def test_two_workers_share_a_postgresql_study(tmp_path, monkeypatch, postgres_databases):
    mlflow_uri, optuna_url = (with_installed_driver(postgres_databases[k]) for k in ("mlflow", "optuna"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    monkeypatch.chdir(tmp_path)
    data_dir = make_corpora(tmp_path / "corpora")
    _, cache = make_teacher_and_cache(data_dir, experiment="shared")
    space = tmp_path / "fast.yaml"
    space.write_text(SPACE.format(fixed=FAST_FIXED, epochs=2))
    command = ["python", "-m", "kd", "tune", "--task", "tiny", "--cache", cache, "--space", str(space), "--data-dir",
               str(data_dir), "--storage", optuna_url, "--study", "shared", "--n-trials", "4", "--pruner", "none",
               "--experiment", "shared", "--threads", "1", "--json"]
    command[0] = sys.executable
    env = dict(os.environ)
    logs = [open(tmp_path / f"worker{i}.err", "w+") for i in range(2)]
    workers = [subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
               for log in logs]
    try:
        outputs = [worker.communicate(timeout=420)[0] for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    errors = [(tmp_path / f"worker{i}.err").read_text()[-3000:] for i in range(2)]
    for log in logs:
        log.close()
    assert [w.returncode for w in workers] == [0, 0], errors
    results = [json.loads(out.strip().splitlines()[-1]) for out in outputs]

    storage = optuna.storages.RDBStorage(optuna_url)
    try:
        study = optuna.load_study(study_name="shared", storage=storage)
        trials = study.get_trials(deepcopy=True)
    finally:
        storage.engine.dispose()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4, [(t.number, t.state, t.user_attrs) for t in trials]
    for trial in trials:  # a trial started in a race for the last slot goes back to the queue unrun
        if trial.state != TrialState.COMPLETE:
            assert trial.state == TrialState.WAITING and not trial.params, (trial.number, trial.state, trial.params)
    assert [r["finished_trials"] for r in results] == [4, 4], "each worker reports the study's count"
    assert not any("Traceback" in error or "SurplusTrial" in error for error in errors), errors

    client = MlflowClient(mlflow_uri)
    experiment_id = client.get_experiment_by_name("shared").experiment_id
    parents = client.search_runs([experiment_id], filter_string="tags.model_kind = 'study'")
    assert len(parents) == 1, "exactly one live parent run for the study"
    parent = parents[0]
    assert parent.info.lifecycle_stage == "active" and parent.data.tags["study"] == "shared"
    assert {r["parent_run_id"] for r in results} == {parent.info.run_id}, "both workers log under the same parent"
    for trial in complete:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.info.status == "FINISHED" and run.info.lifecycle_stage == "active"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["trial_number"] == str(trial.number) and run.data.tags["trial_state"] == "COMPLETE"
        assert run.data.metrics["devel_f1"] == pytest.approx(trial.value)
    children = [r for r in client.search_runs([experiment_id], max_results=1000) if r.data.tags.get("tuning") == "trial"]
    assert len(children) == 4 and {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}


@pytest.mark.parametrize("value, pruned_by", [(0.2, {"percentile", "median"}), (0.28, {"median"}), (0.4, set())])
def test_percentile_prunes_the_bottom_third_median_the_bottom_half(value, pruned_by):
    """Six finished trials scored 0.1..0.6 at the first epoch: the bottom third lies below 0.267
    (linear interpolation, as numpy's percentile), the bottom half below 0.35."""
    from kd.tuning.study import make_pruner

    for name in ("percentile", "median", "none"):
        study = optuna.create_study(direction="maximize", pruner=make_pruner(name, epochs=3))
        for finished in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6):
            trial = study.ask()
            trial.report(finished, 1)
            study.tell(trial, finished)
        trial = study.ask()
        trial.report(value, 1)
        assert trial.should_prune() == (name in pruned_by), name

"""The end of a shared trial budget is a quiet stop: a worker whose remaining budget is run by
another worker waits for it and reports the study's count; a trial started in a race for the last
slot goes back to the queue unrun, never FAIL; and database storages use Optuna's supported retry
callback (no FutureWarning). Training is replaced by a quick stand-in: only the budget is tested."""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
import warnings

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

import kd.tuning.study as study_module
import kd.tuning.workers as workers
from kd.tracking.runs import TrackedRun
from kd.tracking.backend import open_client
from kd.training.tagger_job import RunSummary

SPACE = "fixed: {loss: logits, epochs: 2}\nparams:\n  alpha: {type: float, low: 0.0, high: 1.0}\n"


@pytest.fixture
def setup(tmp_path, monkeypatch):
    """A journal study in tmp_path, a trained-model stand-in that counts its calls, and the tune
    job's common options."""
    monkeypatch.chdir(tmp_path)
    trained = []

    def stand_in(student, client, checkpoint_dir, *, hooks, placement, **_):
        run = TrackedRun.start(client, student.experiment, None, dict(placement.tags or {}),
                               parent_run_id=placement.parent_run_id)
        hooks.on_start(run.run_id)
        trained.append(run.run_id)
        hooks.on_epoch(1, {"devel_f1": 0.5})
        run.finish()
        return RunSummary(run.run_id, {"devel_f1": 0.5})

    monkeypatch.setattr(study_module, "run_tagger_job", stand_in)
    (tmp_path / "space.yaml").write_text(SPACE)
    common = dict(task="tiny", cache_run="0" * 32, space=str(tmp_path / "space.yaml"), pruner="none", study="budget",
                  experiment="budget")
    return tmp_path, trained, common


def journal(tmp_path) -> JournalStorage:
    return JournalStorage(JournalFileBackend(str(tmp_path / "kd-optuna.log")))


def other_worker_runs_the_last_trial(tmp_path) -> tuple[optuna.Study, optuna.Trial]:
    """A study with one complete trial and one running in another (live) worker."""
    study = optuna.create_study(study_name="budget", storage=journal(tmp_path), direction="maximize")
    first = study.ask()
    first.suggest_float("alpha", 0.0, 1.0)
    study.tell(first, 0.4)
    last = study.ask()
    last.suggest_float("alpha", 0.0, 1.0)
    last.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # alive: it is this process
    return study, last


def finish_once_looked_at(monkeypatch, study: optuna.Study, trial: optuna.Trial, stale_first: bool = False):
    """Completes the other worker's trial shortly after this worker first counts the study's
    trials (so it is seen running); with `stale_first`, that first count misses it, as when both
    workers look at the same moment."""
    real_counts = workers.counts
    looked = threading.Event()

    def counts(study):
        finished, running = real_counts(study)
        if not looked.is_set():
            looked.set()
            return (finished, running - 1) if stale_first else (finished, running)
        return finished, running

    monkeypatch.setattr(workers, "counts", counts)
    thread = threading.Thread(target=lambda: (looked.wait(60), time.sleep(0.5), study.tell(trial, 0.6)))
    thread.start()
    return thread


def tune_quietly(setup, caplog, n_trials: int) -> study_module.TuneResult:
    tmp_path, _, common = setup
    client = open_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with caplog.at_level(logging.WARNING, logger="optuna"):
        result = study_module.tune(study_module.TuneJob(n_trials=n_trials, **common), client, tmp_path / "checkpoints")
    failures = [r.getMessage() for r in caplog.records if r.exc_info or "failed" in r.getMessage()]
    assert not failures, "the end of the budget is no failure"
    return result


def states(tmp_path) -> dict[str, int]:
    study = optuna.load_study(study_name="budget", storage=journal(tmp_path))
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


def test_a_worker_whose_budget_is_running_elsewhere_waits_and_reports_the_study_count(setup, caplog, monkeypatch):
    tmp_path, trained, _ = setup
    study, last = other_worker_runs_the_last_trial(tmp_path)
    thread = finish_once_looked_at(monkeypatch, study, last)
    result = tune_quietly(setup, caplog, n_trials=2)
    thread.join()
    assert trained == [], "the budget was taken: this worker trains nothing"
    assert result.finished_trials == 2, "the report gives the study's count, not the count when it stopped"
    assert result.best_value == 0.6
    assert states(tmp_path) == {"COMPLETE": 2}


def test_a_trial_started_in_a_race_for_the_last_slot_goes_back_unrun(setup, caplog, monkeypatch):
    tmp_path, trained, common = setup
    study, last = other_worker_runs_the_last_trial(tmp_path)
    real_counts = workers.counts
    thread = finish_once_looked_at(monkeypatch, study, last, stale_first=True)
    result = tune_quietly(setup, caplog, n_trials=2)
    thread.join()
    assert trained == [] and result.finished_trials == 2
    trials = optuna.load_study(study_name="budget", storage=journal(tmp_path)).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.WAITING]
    assert trials[2].params == {}, "handed back before anything was sampled"

    # A larger budget later takes the queued trial and runs it like any other.
    monkeypatch.setattr(workers, "counts", real_counts)
    again = tune_quietly(setup, caplog, n_trials=3)
    assert again.finished_trials == 3 and len(trained) == 1
    assert states(tmp_path) == {"COMPLETE": 3}


def test_database_storages_use_the_supported_retry_callback(tmp_path):
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        storage = study_module.open_storage(f"sqlite:///{tmp_path / 'optuna.db'}", attempts=1)
    try:
        assert not [w for w in caught if issubclass(w.category, FutureWarning)], [str(w.message) for w in caught]
        assert type(storage.heartbeat_stale_trial_callback) is RetryHeartbeatStaleTrialCallback
    finally:
        storage.engine.dispose()

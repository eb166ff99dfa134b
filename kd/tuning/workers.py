"""A worker's share of a study: pulling trials until the study's budget is taken.

The budget is global (`n_trials` finished trials across all workers), and its end is normal, not
an error. A worker starts a trial only while finished and running trials together leave room; two
workers may still both start one for the last slot, and the one that comes later hands its trial
back to the queue unrun (WAITING, for a later, larger budget) instead of failing it. A worker whose
remaining budget is being run by other workers waits for them, so that what it reports is the
study's count, and resumes pulling if one of them dies and its trial is re-queued.

Optuna's `Study.optimize` cannot hand a trial back (it always ends a trial it started), so the loop
is kept here with `ask` and `tell`, and keeps the heartbeat a database storage expects.
"""
from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any


def _states():
    from optuna.trial import TrialState

    return TrialState


def counts(study) -> tuple[int, int]:
    """(finished, running) trials of the study; finished means complete or pruned."""
    state = _states()
    trials = study.get_trials(deepcopy=False, states=(state.COMPLETE, state.PRUNED, state.RUNNING))
    running = sum(1 for t in trials if t.state == state.RUNNING)
    return len(trials) - running, running


def _is_surplus(study, trial, n_trials: int) -> bool:
    """Whether trials started before this one already take the whole budget."""
    state = _states()
    earlier = study.get_trials(deepcopy=False, states=(state.COMPLETE, state.PRUNED, state.RUNNING))
    return sum(1 for t in earlier if t.number < trial.number) >= n_trials


def _hand_back(study, trial) -> None:
    """Returns an unrun trial to the queue. A queued retry keeps its parameters; a fresh trial has
    none yet (the surplus check comes before any suggestion), so a later worker samples anew."""
    study._storage.set_trial_state_values(trial._trial_id, _states().WAITING)


@contextlib.contextmanager
def _heartbeat(study, trial) -> Iterator[None]:
    """Records the trial's heartbeat while it runs, where the storage keeps them (a database):
    without it other workers would take the trial for a dead worker's and fail it."""
    storage = study._storage
    interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
    if not interval:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            storage.record_heartbeat(trial._trial_id)
            if stop.wait(interval):
                return
    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _run(study, trial, objective: Callable[[Any], float]) -> None:
    import optuna

    with _heartbeat(study, trial):
        try:
            value = objective(trial)
        except optuna.TrialPruned:
            study.tell(trial, state=_states().PRUNED)
            return
        except BaseException:
            study.tell(trial, state=_states().FAIL)
            raise
    study.tell(trial, value)


def pull_trials(study, objective: Callable[[Any], float], n_trials: int, timeout: float | None,
                recover: Callable[[], None], poll_seconds: float = 2.0) -> bool:
    """Runs trials of `study` until it holds `n_trials` finished trials (or `timeout` seconds
    pass), waiting while other workers run the last ones. `recover` re-queues trials of dead
    workers. Returns whether this worker ended by waiting for other workers' trials (which then
    finished the study: its refit is theirs to do)."""
    import optuna

    started = time.monotonic()
    waited = False
    while timeout is None or time.monotonic() - started < timeout:
        optuna.storages.fail_stale_trials(study)  # a database's dead workers, by heartbeat
        finished, running = counts(study)
        if finished >= n_trials:
            break
        if finished + running >= n_trials:
            waited = True
            time.sleep(poll_seconds)
            recover()
            continue
        trial = study.ask()
        if _is_surplus(study, trial, n_trials):
            _hand_back(study, trial)
            continue
        _run(study, trial, objective)
        waited = False
    return waited

"""`kd tune`: an Optuna study per corpus and search space whose trials are students trained on
train and scored on devel (test is never read), each trial an MLflow run nested under one parent
run for the study.

Storage: by default a journal file (safe for several processes on one machine, no server); with
a database URL (PostgreSQL) several machines share one study. Workers pull trials until the study
holds `n_trials` finished (complete or pruned) trials in total. A worker that dies leaves a
RUNNING trial: it is failed and re-queued with the same parameters, by the heartbeat of a
database storage or, on one machine, by the next worker that finds its process gone.
"""
from __future__ import annotations

import json
import math
import os
import random
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kd.errors import FieldError, KdError
from kd.tracking.runs import TrackedRun, git_commit, process_alive
from kd.tracking.status import run_status
from kd.training.distillation import DistillOptions
from kd.models.tagger import TaggerConfig
from kd.training.loop import HookChain, TrainingHooks, TrainingOptions
from kd.training.tagger_job import RunPlacement, TaggerJob, run_tagger_job
from kd.tuning.record import record_study
from kd.tuning.space import DISTILL_KEYS, MODEL_KEYS, TRAINING_KEYS, SearchSpace, load_search_space, with_fixed
from kd.tuning.storage import describe_storage, import_optuna, open_storage, storage_lock
from kd.tuning.workers import pull_trials

SAMPLERS = ("tpe", "grid", "random")
PRUNERS = ("median", "percentile", "hyperband", "none")


@dataclass
class TuneJob:
    task: str
    cache_run: str
    space: str
    n_trials: int = 20
    timeout: float | None = None
    study: str | None = None
    storage: str | None = None
    sampler: str = "tpe"
    pruner: str = "median"
    seed: int = 1
    refit_seeds: int = 0
    data_dir: str | None = None
    device: str = "auto"
    experiment: str = "kd"
    # Options the space fixes (or leaves at kd's defaults) set to other values: `--set epochs=3`.
    overrides: dict[str, Any] = field(default_factory=dict)
    # Transfer text every trial's (and refit's) student also learns from; the cache must hold it
    # (kd cache-logits --unlabelled FILE). `--set unlabelled_ratio=R` (or the space) draws R per labelled.
    unlabelled: str | None = None
    allow_eval_overlap: bool = False

    def __post_init__(self) -> None:
        if self.unlabelled is not None and not Path(self.unlabelled).is_file():
            raise FieldError("unlabelled", self.unlabelled, "no such file")
        if self.n_trials < 1:
            raise FieldError("n_trials", self.n_trials, "must be at least 1")
        if self.sampler not in SAMPLERS:
            raise FieldError("sampler", self.sampler, f"use one of {', '.join(SAMPLERS)}")
        if self.pruner not in PRUNERS:
            raise FieldError("pruner", self.pruner, f"use one of {', '.join(PRUNERS)}")
        if self.refit_seeds < 0:
            raise FieldError("refit_seeds", self.refit_seeds, "must not be negative")


def make_sampler(name: str, space: SearchSpace, seed: int):
    optuna = import_optuna()
    if name == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def make_pruner(name: str, epochs: int):
    """`median` and `percentile` compare a trial's best devel F1 so far with the finished trials' at
    the same epoch, from the first epoch on, once three trials have finished: `median` prunes the
    bottom half, `percentile` only the bottom third. Devel F1 of short runs swings by points between
    epochs; with two start-up trials instead of three, median pruning stopped the eventual best
    trial twice as often in bench/tune.py's studies (bench/README.md)."""
    optuna = import_optuna()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    if name == "percentile":
        return optuna.pruners.PercentilePruner(percentile=200 / 3, n_startup_trials=3, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1))
    return optuna.pruners.NopPruner()


# The study's objective, as Optuna's plots and dashboard name it.
OBJECTIVE = "devel_f1"


@dataclass
class TrialHooks:
    """What a progress display hears of a study: before each trial, (finished trials, n_trials, best
    value so far); then each trial's training (its run id, batches and epochs)."""

    on_trial: Callable[[int, int, float | None], None] = lambda finished, n_trials, best: None
    training: TrainingHooks = field(default_factory=TrainingHooks)


class TrialWatch(TrainingHooks):
    """A trial's own hooks: its run id kept on the trial, each epoch's devel F1 reported to Optuna
    (which may prune it), warnings logged."""

    def __init__(self, trial, epochs: int, log: Callable[[str], None]) -> None:
        self.trial, self.epochs, self.log, self.pruned = trial, epochs, log, False

    def on_start(self, run_id: str) -> None:
        self.trial.set_user_attr("mlflow_run_id", run_id)

    def on_epoch(self, epoch: int, metrics: dict[str, float]) -> bool:
        self.trial.report(metrics["devel_f1"], epoch)
        # After the last epoch there is nothing left to save: the trial completes.
        self.pruned = epoch < self.epochs and self.trial.should_prune()
        return self.pruned

    def warn(self, message: str) -> None:
        self.log(message)


def default_study_name(task: str, space: SearchSpace, overrides: dict[str, Any] | None = None,
                       unlabelled: str | None = None) -> str:
    """`<corpus>-<space>`; with `--set` values, those too (`NCBI-disease-logits-epochs3`): trials of
    another fixed value are another study, not more samples of this one; likewise with transfer text
    (`-text<first 8 hex digits of its SHA-256>`)."""
    from kd.training.identity import file_digest

    suffix = "".join(f"-{name}{value}" for name, value in sorted((overrides or {}).items()))
    text = f"-text{file_digest(unlabelled)[:8]}" if unlabelled else ""
    return f"{Path(task).name}-{space.name}{suffix}{text}"


def finished_states():
    optuna = import_optuna()
    return (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def count_finished(study) -> int:
    return len(study.get_trials(deepcopy=False, states=finished_states()))


def recover_abandoned_trials(study, client) -> list[int]:
    """Fails and re-queues RUNNING trials whose worker process on this machine is gone."""
    optuna = import_optuna()
    host = socket.gethostname()
    recovered = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        worker_host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        if worker_host != host or not pid.isdigit() or process_alive(int(pid)):
            continue
        try:
            study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        except Exception:  # another worker recovered it first
            continue
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id:
            try:
                client.set_terminated(run_id, status="KILLED")
            except Exception:
                pass
        recovered.append(trial.number)
    return recovered


def find_or_create_parent(client, experiment: str, study_name: str, space: SearchSpace, *, storage: str | None,
                          opened) -> TrackedRun:
    """The study's parent run, made by the first worker (`storage` as given, `opened` as
    `open_storage` returned it). Two workers started together each found no parent and made one
    (CI, on PostgreSQL), so looking and making happen under the storage's lock. Where a database
    offers no lock, all settle on the earliest parent and the others delete their own."""
    with storage_lock(storage, opened, f"kd parent run of {study_name}"):
        return _find_or_create_parent(client, experiment, study_name, describe_storage(storage), space)


def _find_or_create_parent(client, experiment: str, study_name: str, storage_text: str,
                           space: SearchSpace) -> TrackedRun:
    def existing() -> list:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            return []
        return client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"], max_results=10,
                                  filter_string=f"tags.model_kind = 'study' and tags.study = '{study_name}' "
                                                f"and tags.storage = '{storage_text}'")
    runs = existing()
    if runs:
        return TrackedRun(client, runs[0].info.run_id)
    mine = TrackedRun.start(client, experiment, study_name, {
        "model_kind": "study", "study": study_name, "storage": storage_text, "search_space": space.name,
        "git_commit": git_commit()})
    mine.log_json({"path": space.path, "fixed": space.fixed,
                   "params": [p.__dict__ for p in space.params]}, "search_space.json")
    first = existing()[0].info.run_id
    if first != mine.run_id:
        client.delete_run(mine.run_id)
        return TrackedRun(client, first)
    return mine


def student_job(job: TuneJob, values: dict[str, Any], *, seed: int, train_splits: list[str],
                eval_split: str) -> TaggerJob:
    """The student a trial (or a refit) trains: the search space's fixed options and the sampled
    values over kd's defaults."""
    distill = {k: v for k, v in values.items() if k in DISTILL_KEYS}
    model = {k: v for k, v in values.items() if k in MODEL_KEYS}
    training = {k: v for k, v in values.items() if k in TRAINING_KEYS}
    try:
        return TaggerJob(
            corpora=[job.task], data_dir=job.data_dir, model=TaggerConfig(**model),
            training=TrainingOptions(seed=seed, **training), train_splits=train_splits, eval_split=eval_split,
            device=job.device, experiment=job.experiment,
            distill=DistillOptions(cache_run=job.cache_run, unlabelled=job.unlabelled,
                                   allow_eval_overlap=job.allow_eval_overlap, **distill))
    except FieldError as error:  # a value the space gave: named as the space names it
        if error.field not in values:
            raise
        raise KdError(error.worded(f"{job.space}: params.{error.field}")) from None


@dataclass
class TuneResult:
    study: str
    storage: str
    parent_run_id: str
    finished_trials: int
    best_value: float | None
    best_params: dict[str, Any]
    refit: dict[str, Any] = field(default_factory=dict)


def tune(job: TuneJob, client, checkpoint_dir: Path, log: Callable[[str], None] = lambda message: None,
         hooks: TrialHooks | None = None) -> TuneResult:
    """Runs trials until the study holds `job.n_trials` finished ones; the study's parent run ends
    FINISHED with it, or FAILED (KILLED when interrupted) if this worker fails."""
    hooks = hooks or TrialHooks()
    space = with_fixed(load_search_space(job.space), job.overrides)
    study_name = job.study or default_study_name(job.task, space, job.overrides, job.unlabelled)
    epochs = int(space.fixed.get("epochs", TrainingOptions().epochs))
    storage = open_storage(job.storage)
    study = _open_study(study_name, storage, make_pruner(job.pruner, epochs))
    # A fresh study is reproducible from --seed; a worker joining or continuing a study mixes in its
    # process and the study's progress, or it would draw the values already tried again.
    sampler_seed = job.seed if not study.trials else job.seed + 7919 * len(study.trials) + os.getpid()
    study.sampler = make_sampler(job.sampler, space, sampler_seed)
    parent = find_or_create_parent(client, job.experiment, study_name, space, storage=job.storage, opened=storage)
    client.update_run(parent.run_id, status="RUNNING")  # a study continued by a larger budget runs again
    with run_status(parent):
        return _run_study(job, client, checkpoint_dir, log, hooks, space, study, parent)


def _run_study(job: TuneJob, client, checkpoint_dir: Path, log: Callable[[str], None], hooks: TrialHooks,
               space: SearchSpace, study, parent: TrackedRun) -> TuneResult:
    optuna = import_optuna()
    study_name, storage_text = study.study_name, describe_storage(job.storage)
    recovered = recover_abandoned_trials(study, client)
    if recovered:
        log(f"re-queued trials abandoned by dead workers: {', '.join(map(str, recovered))}")
    host_pid = f"{socket.gethostname()}:{os.getpid()}"

    def objective(trial) -> float:
        best = _best_trial(study)
        hooks.on_trial(count_finished(study), job.n_trials, best.value if best else None)
        trial.set_user_attr("worker", host_pid)
        values = {**space.fixed, **{p.name: p.suggest(trial) for p in space.params}}
        student = student_job(job, values, seed=job.seed, train_splits=["train"], eval_split="devel")
        watch = TrialWatch(trial, student.training.epochs, log)
        summary = run_tagger_job(
            student, client, checkpoint_dir, hooks=HookChain(hooks.training, watch), log_model=False,
            placement=RunPlacement(parent_run_id=parent.run_id, tags={
                "study": study_name, "trial_number": trial.number, "search_space": space.name, "tuning": "trial"}))
        pruned = watch.pruned
        client.set_tag(summary.run_id, "trial_state", "PRUNED" if pruned else "COMPLETE")
        log(f"trial {trial.number}: devel F1 {summary.metrics['devel_f1']:.4f}" + (" (pruned)" if pruned else "")
            + f" {json.dumps({p.name: values[p.name] for p in space.params})}")
        if pruned:
            raise optuna.TrialPruned()
        return summary.metrics["devel_f1"]

    def recover() -> None:
        if recover_abandoned_trials(study, client):
            log("re-queued trials abandoned by dead workers while waiting for the study's last trials")

    waited = pull_trials(study, objective, job.n_trials, job.timeout, recover)
    finished = count_finished(study)
    best = _best_trial(study)
    hooks.on_trial(finished, job.n_trials, best.value if best else None)
    record_study(parent, study, best, finished, job.n_trials)
    result = TuneResult(study=study_name, storage=storage_text, parent_run_id=parent.run_id, finished_trials=finished,
                        best_value=best.value if best else None, best_params=dict(best.params) if best else {})
    if job.refit_seeds and best is not None and finished >= job.n_trials:
        if waited:  # the worker that ran the study's last trial refits; two at once would refit twice
            log("the study's budget was finished by another worker, which refits the best configuration")
        else:
            result.refit = refit(job, client, checkpoint_dir, parent, study_name, space, best, log)
    return result


def _open_study(study_name: str, storage, pruner):
    optuna = import_optuna()
    for attempt in range(5):
        try:
            study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize", pruner=pruner,
                                        load_if_exists=True)
            if study.metric_names != [OBJECTIVE]:
                study.set_metric_names([OBJECTIVE])
            return study
        except optuna.exceptions.DuplicatedStudyError:  # created by a worker between our check and insert
            time.sleep(0.2 * (attempt + 1))
    raise FieldError("study", study_name, "could not create or load the study")


def _best_trial(study):
    optuna = import_optuna()
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return max(complete, key=lambda t: (t.value, -t.number)) if complete else None


def refit(job: TuneJob, client, checkpoint_dir: Path, parent: TrackedRun, study_name: str, space: SearchSpace,
          best, log: Callable[[str], None]) -> dict[str, Any]:
    """Trains the best configuration on train+devel with `refit_seeds` seeds, scored on test, as
    `tuned` runs; seeds already refitted for this best trial are reused, not run twice."""
    values = {**space.fixed, **best.params}
    experiment = client.get_experiment_by_name(job.experiment)
    done = {r.data.tags.get("seed"): r for r in client.search_runs(
        [experiment.experiment_id], max_results=1000,
        filter_string=f"tags.model_kind = 'tuned' and tags.study = '{study_name}' and "
                      f"tags.best_trial = '{best.number}' and attributes.status = 'FINISHED'")}
    scores, run_ids = [], []
    for seed in range(job.seed, job.seed + job.refit_seeds):
        if str(seed) in done:
            run = done[str(seed)]
            scores.append(run.data.metrics["test_f1"])
            run_ids.append(run.info.run_id)
            continue
        summary = run_tagger_job(
            student_job(job, values, seed=seed, train_splits=["train", "devel"], eval_split="test"), client,
            checkpoint_dir, placement=RunPlacement(parent_run_id=parent.run_id, tags={
                "model_kind": "tuned", "study": study_name, "search_space": space.name, "best_trial": best.number,
                "tuning": "refit"}))
        log(f"refit seed {seed}: test F1 {summary.metrics['test_f1']:.4f}")
        scores.append(summary.metrics["test_f1"])
        run_ids.append(summary.run_id)
    mean = sum(scores) / len(scores)
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / (len(scores) - 1)) if len(scores) > 1 else 0.0
    parent.log_metrics({"refit_test_f1_mean": mean, "refit_test_f1_std": std})
    return {"test_f1_mean": mean, "test_f1_std": std, "seeds": len(scores), "run_ids": run_ids}

"""Training a tagger on one corpus (the single-task model, STM) or many (the multi-task teacher,
MTM), or a student, evaluated and tracked as one MLflow run: the tracked shell around
`kd.training.assemble`, which builds the training itself.

The STM and MTM differ only in data and schedule: the MTM shares embeddings and the shared BiLSTM
across corpora and has a head per corpus; each step draws one corpus and steps that corpus's own
optimizer, which owns the shared parameters and that corpus's head. With one corpus this is exactly
single-task training.
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kd.cache.knowledge import TeacherKnowledge
from kd.data.conll import write_conll
from kd.data.text.overlap import text_manifest
from kd.errors import KdError
from kd.models.device import resolve_device
from kd.models.io import save_model
from kd.tracking.logged_models import log_tagger_model
from kd.tracking.runs import TrackedRun, git_commit
from kd.tracking.status import run_status
from kd.training.assemble import Assembly, SplitResults, assemble, load_job_tasks
from kd.training.evaluate import EntityScores
from kd.tracking.metrics import DESCRIPTION_TAG, headline
from kd.training.identity import default_run_name, identity_tags, tagger_definition
from kd.training.job_definition import TaggerJob, checkpoint_file, job_to_run
from kd.training.loop import HookChain, TrainingHooks, TrainingState
from kd.training.student_diagnostics import log_student_diagnostics
from kd.training.weighing import weigh_student


@dataclass
class RunSummary:
    run_id: str
    metrics: dict[str, float]


@dataclass
class RunPlacement:
    """Where a job's run is tracked, beyond its experiment: logged into an existing run (`attach_to`,
    the one `mlflow run` made), or nested under a parent (tuning trials), with extra tags that add
    to or override the standard ones."""

    attach_to: str | None = None
    parent_run_id: str | None = None
    tags: dict[str, Any] | None = None


class EpochLog(TrainingHooks):
    """Logs every epoch's metrics to the run, ahead of the caller's hooks."""

    def __init__(self, run: TrackedRun) -> None:
        self.run = run

    def on_epoch(self, epoch: int, metrics: dict[str, float]) -> bool:
        self.run.log_metrics(metrics, step=epoch)
        return False


def log_final_artifacts(run: TrackedRun, log_model: Callable[[Path], None], job_dict: dict[str, Any],
                        evaluators: dict[str, Any],
                        results: dict[str, tuple[dict[str, EntityScores], dict[str, list[list[str]]]]]) -> None:
    """The model (`log_model` saves and logs it from a staging folder), its config, predictions per
    split (and corpus) as CoNLL, per-type reports. `evaluators[split].datasets[task].sentences`."""
    reports: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as staging:
        staging = Path(staging)
        log_model(staging)
        for split, (scores, predictions) in results.items():
            single = len(predictions) == 1
            for task, predicted in predictions.items():
                dataset = evaluators[split].datasets[task]
                target = staging / split / (f"{split}.conll" if single else f"{task}.conll")
                target.parent.mkdir(parents=True, exist_ok=True)
                write_conll([s.tokens for s in dataset.sentences], predicted, target)
                run.log_artifact(target, "predictions" if single else f"predictions/{split}")
            reports[split] = {task: {"precision": s.precision, "recall": s.recall, "f1": s.f1,
                                     "per_type": s.per_type} for task, s in scores.items()}
    run.log_json(job_dict, "config.json")
    run.log_json(reports, "report.json")


def log_student_report(run: TrackedRun, client, assembly: Assembly, history: list[dict[str, float]],
                       final: dict[str, float], warn: Callable[[str], None], weigh: bool) -> dict[str, float]:
    """The teacher-quality check and, with `weigh`, the student weighed against its teacher
    (kd.training.weighing); returns the weighing's metrics. Tuning trials skip the weighing: timing
    the teacher costs a pass over the scored split."""
    job, teacher = assembly.job, assembly.teacher
    log_student_diagnostics(run, client, job.distill, teacher.task, teacher.teacher_runs, history, final, warn)
    if not weigh:
        return {}
    try:
        weighed = weigh_student(client, assembly, final[f"{job.eval_split}_f1"])
    except KdError as error:
        # A cache can outlive its teacher runs; a trained student is not failed for a comparison.
        warn(f"warning: the student was not weighed against its teacher: {error}")
        return {}
    run.log_metrics(weighed, step=len(history))
    return weighed


def run_tags(assembly: Assembly, extra_tags: dict[str, Any] | None) -> dict[str, Any]:
    """The tags of a new run: what it trains (kind, output, identity), the teacher of a student,
    and `extra_tags` over them. A tuned model (`model_kind` tuned) is identified by its search space."""
    job, teacher, extra = assembly.job, assembly.teacher, extra_tags or {}
    tags = {"task": ",".join(assembly.tasks), "model_kind": job.model_kind, "output": job.model.output,
            "seed": job.training.seed, "git_commit": git_commit(),
            **({"loss": job.distill.loss, **teacher.run_tags()} if teacher else {}),
            **({"unlabelled_eval_overlap": assembly.facts["unlabelled_eval_overlap"]}
               if "unlabelled_eval_overlap" in assembly.facts else {}), **extra}
    tuned = str(extra.get("search_space")) if tags["model_kind"] == "tuned" else None
    unlabelled = job.distill.unlabelled if job.distill else None
    return {**identity_tags(tagger_definition(job, teacher, search_space=tuned), unlabelled), **tags}


def start_run(client, assembly: Assembly, checkpoint_dir: Path, placement: RunPlacement) -> tuple[TrackedRun, Path]:
    """A new run of the assembly's job, named `<model_name>-<corpus>-s<seed>` unless the job names
    it, its params logged and its checkpoint path tagged."""
    job = assembly.job
    tags = run_tags(assembly, placement.tags)
    name = job.run_name or default_run_name(tags["model_name"], list(assembly.tasks), job.training.seed)
    run = TrackedRun.start(client, job.experiment, name, tags, parent_run_id=placement.parent_run_id,
                           attach_to=placement.attach_to)
    run.log_params(job.params())
    manifest = text_manifest(job.distill.unlabelled) if job.distill and job.distill.unlabelled else None
    if manifest is not None:
        run.log_artifact(manifest, "unlabelled")
    checkpoint = checkpoint_file(checkpoint_dir, run.run_id).resolve()
    run.set_tags({"checkpoint": str(checkpoint)})
    return run, checkpoint


def train_tracked(run: TrackedRun, assembly: Assembly, state: TrainingState, checkpoint: Path,
                  hooks: TrainingHooks) -> tuple[list[dict[str, float]], dict[str, float], SplitResults]:
    """Trains with every epoch's metrics logged (ahead of the caller's hooks, which may stop
    training), then logs the final scores. Returns the epoch history, final metrics and results."""
    if not checkpoint.exists():
        # Saved before the first epoch, so that a run killed before its first epoch's
        # checkpoint is resumed from scratch with its own options, not refused.
        state.save(checkpoint)
    run.log_metrics(assembly.size_metrics())
    result = assembly.train(hooks=HookChain(EpochLog(run), hooks), checkpoint_path=checkpoint, state=state)
    final, results = assembly.score(result)
    run.log_metrics(final, step=result.state.epoch)
    run.set_tags({DESCRIPTION_TAG: headline(final)})
    return result.state.history, final, results


def run_tagger_job(job: TaggerJob | None, client, checkpoint_dir: Path, *, hooks: TrainingHooks | None = None,
                   resume_run_id: str | None = None, placement: RunPlacement | None = None,
                   log_model: bool = True, tasks: dict[str, Any] | None = None) -> RunSummary:
    """Trains, evaluates and logs one STM, MTM or student. With `resume_run_id`, continues that run
    from its checkpoint with the options it was started with (`job` is then ignored); `placement`
    says where a new run is tracked; without `log_model` the model and predictions are not logged
    (trials keep only their metrics). `hooks` hear the run id as soon as the run exists, every
    batch and epoch, and a teacher-quality warning. `tasks`: the job's corpora, where the caller
    read them already (load_job_tasks). A resumed run is taken over only once its checkpoint, data
    and teacher are read: a refused resume leaves it as it was."""
    hooks = hooks or TrainingHooks()
    job, run, state, checkpoint = job_to_run(client, job, resume_run_id, TaggerJob.from_dict)
    tasks = load_job_tasks(job) if tasks is None or resume_run_id else tasks
    teacher = (TeacherKnowledge.gather(job.distill, job.distill.target_splits(job.train_splits), client,
                                       next(iter(tasks)), resolve_device(job.device)) if job.distill else None)
    assembly = assemble(job, teacher, tasks=tasks)
    if state is None:
        run, checkpoint = start_run(client, assembly, checkpoint_dir, placement or RunPlacement())
        state = TrainingState(job=job.to_dict())
    else:
        run.take_over()
    hooks.on_start(run.run_id)
    with run_status(run):
        history, final, results = train_tracked(run, assembly, state, checkpoint, hooks)
        if teacher is not None:
            final.update(log_student_report(run, client, assembly, history, final, hooks.warn, weigh=log_model))
        if log_model:
            log_final_artifacts(run, lambda staging: log_tagger_model(run, save_model(
                assembly.model, assembly.vocabularies, staging / "tagger")), job.to_dict(), assembly.evaluators, results)
        else:
            run.log_json(job.to_dict(), "config.json")
    checkpoint.unlink(missing_ok=True)
    client.delete_tag(run.run_id, "checkpoint")
    return RunSummary(run_id=run.run_id, metrics=final)

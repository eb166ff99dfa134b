"""Tuned students in plans (`kind: tuned`): per corpus, an Optuna study (kd.tuning.study, as `kd tune`
runs it: trials train on train and are scored on devel) is a `study` cell; then per seed the best
configuration is trained on train+devel and scored on test, a model cell like any other:

    models:
      TSM: {kind: tuned, cache: mtm, space: logits, trials: 20, pruner: median, unlabelled: true}
      TSM1: {kind: tuned, cache: mtm, space: kl, trials: 10, unlabelled: true, unlabelled_ratio: 1}

`space` is a search space file relative to the plan, or one kd ships (`logits`, `kl.yaml`, ...);
its `fixed` options (not the plan's `defaults`) define the students; `unlabelled_ratio` fixes that
option for every trial and refit (as `kd tune --set unlabelled_ratio=R`). A study cell's study lives in
the journal `<work>/checkpoints/studies/<cell>.log`: a killed study cell runs again and continues the
study where it stopped (kd tune's resumption), never repeating a finished trial."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from kd.jobs.plan_file import PlanFile, is_int, merge_options
from kd.option_schema import default

TUNED_KEYS = ("kind", "cache", "space", "trials", "pruner", "sampler", "unlabelled", "unlabelled_ratio")


def find_space(source: PlanFile, key: tuple, value: Any) -> Path:
    """The space file: relative to the plan, else one kd ships (kd/search_spaces)."""
    import kd

    if not isinstance(value, str) or not value:
        raise source.error(key, "missing: a search space file (relative to the plan) or one kd ships (logits, kl, ...)")
    shipped = Path(kd.__file__).parent / "search_spaces"
    for candidate in (source.path.parent / value, shipped / value, shipped / f"{value}.yaml"):
        if candidate.is_file():
            return candidate.resolve()
    raise source.error(key, f"{value!r}: no such search space (relative to the plan, or in {shipped})")


def parse_tuned(source: PlanFile, key: tuple, spec: dict) -> dict[str, Any]:
    """The study's settings of a tuned model, checked; its space loaded (a malformed one is an error)."""
    from kd.errors import KdError
    from kd.tuning.study import PRUNERS, SAMPLERS
    from kd.tuning.space import load_search_space

    path = find_space(source, key + ("space",), spec.get("space"))
    try:
        space = load_search_space(path)
    except KdError as error:
        raise source.error(key + ("space",), str(error)) from None
    trials, pruner, sampler = spec.get("trials", 20), spec.get("pruner", "median"), spec.get("sampler", "tpe")
    if not is_int(trials) or trials < 1:
        raise source.error(key + ("trials",), f"{trials!r}: expected a number of trials of at least 1")
    if pruner not in PRUNERS:
        raise source.error(key + ("pruner",), f"{pruner!r}: use one of {', '.join(PRUNERS)}")
    if sampler not in SAMPLERS:
        raise source.error(key + ("sampler",), f"{sampler!r}: use one of {', '.join(SAMPLERS)}")
    return {"space": str(path), "space_name": space.name, "trials": trials, "pruner": pruner, "sampler": sampler,
            "loss": space.fixed.get("loss", default("loss")), "epochs": int(space.fixed.get("epochs", default("epochs"))),
            "space_digest": hashlib.sha256(path.read_bytes()).hexdigest()[:16], "fixed": _fixed(source, key, spec, space)}


def _fixed(source: PlanFile, key: tuple, spec: dict, space) -> dict[str, Any]:
    """What the plan fixes over the space for every trial and refit: the unlabelled ratio (checked by
    the schema as a student's is; kd.jobs.plan checks that the model has text to draw from)."""
    if "unlabelled_ratio" in spec and any(param.name == "unlabelled_ratio" for param in space.params):
        raise source.error(key + ("unlabelled_ratio",), f"{space.path} tunes it (params.unlabelled_ratio)")
    return merge_options(source, key, spec, ("unlabelled_ratio",), {})


def study_config(tuning: dict[str, Any], corpus: str, seed: int, digest: str) -> dict[str, Any]:
    """A study cell's configuration (its space by content, not by where it lies)."""
    return {"job": "study", "corpora": [corpus], "space": tuning["space_name"], "space_digest": tuning["space_digest"],
            "trials": tuning["trials"], "pruner": tuning["pruner"], "sampler": tuning["sampler"], "seed": seed,
            "train_splits": ["train"], "training": {"epochs": tuning["epochs"]}, "distill": None,
            "data": {corpus: digest}, **_fixed_entry(tuning)}


def refit_config(tuning: dict[str, Any], corpus: str, seed: int, digest: str) -> dict[str, Any]:
    return {"job": "refit", "corpora": [corpus], "seed": seed, "train_splits": ["train", "devel"],
            "training": {"epochs": tuning["epochs"]}, "distill": None, "data": {corpus: digest}, **_fixed_entry(tuning)}


def _fixed_entry(tuning: dict[str, Any]) -> dict[str, Any]:
    # Absent when nothing is fixed: the cells of plans written before the key keep their identity.
    return {"fixed": tuning["fixed"]} if tuning.get("fixed") else {}


def tune_job(cell, context, cache_run: str, text: str | None):
    """kd tune's job for a study cell (its study named and stored by the cell's identity), or, for a
    refit cell, what its student needs of one."""
    from kd.tuning.study import TuneJob

    study = cell.config if cell.config["job"] == "study" else {"trials": 1, "sampler": "tpe", "pruner": "none",
                                                               "seed": cell.seed}
    return TuneJob(task=cell.corpus, cache_run=cache_run, space=dict(cell.paths)["space"], n_trials=study["trials"],
                   study=f"plan-{cell.cell_id}", storage=str(Path(context.checkpoint_dir) / "studies" / f"{cell.cell_id}.log"),
                   sampler=study["sampler"], pruner=study["pruner"], seed=study["seed"], data_dir=context.data_dir,
                   device=context.device, experiment=context.experiment, unlabelled=text,
                   overrides={**epochs_override(cell), **cell.config.get("fixed", {})})


def epochs_override(cell) -> dict[str, Any]:
    """`kd plan run --epochs N` over the space's epochs (a space that tunes epochs refuses it)."""
    from kd.tuning.space import load_search_space

    space = load_search_space(dict(cell.paths)["space"])
    epochs = cell.config["training"]["epochs"]
    return {} if epochs == int(space.fixed.get("epochs", default("epochs"))) else {"epochs": epochs}


def run_study_cell(cell, context, client, input_runs: list[str], text: str | None, run) -> None:
    """Runs (or continues) the study; the cell's run keeps the best parameters (tag best_params)."""
    from kd.tuning.study import tune

    (Path(context.checkpoint_dir) / "studies").mkdir(parents=True, exist_ok=True)
    result = tune(tune_job(cell, context, input_runs[0], text), client, Path(context.checkpoint_dir))
    if not result.best_params and result.best_value is None:
        raise ValueError("the study finished no trial")
    run.set_tags({"best_params": json.dumps(result.best_params, sort_keys=True), "study": result.study,
                  "study_run": result.parent_run_id})
    run.log_metrics({"best_devel_f1": float(result.best_value), "finished_trials": float(result.finished_trials)})
    run.finish()


def run_refit_cell(cell, context, client, input_runs: list[str], text: str | None, run) -> None:
    """The best configuration of the study cell (`input_runs[0]`) trained on train+devel with the
    cell's seed, scored on test, a `tuned` run."""
    from kd.training.tagger_job import RunPlacement, run_tagger_job
    from kd.tuning.space import load_search_space
    from kd.tuning.study import student_job

    study_run = client.get_run(input_runs[0])
    job = tune_job(cell, context, input_runs[1], text)
    space = load_search_space(job.space)
    values = {**space.fixed, **job.overrides, **json.loads(study_run.data.tags["best_params"])}
    student = student_job(job, values, seed=cell.seed, train_splits=["train", "devel"], eval_split="test")
    run_tagger_job(student, client, Path(context.checkpoint_dir), placement=RunPlacement(attach_to=run.run_id, tags={
        "model_kind": "tuned", "search_space": space.name, "study": study_run.data.tags["study"], "tuning": "refit"}))

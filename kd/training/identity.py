"""What model a training run trains, as tags `kd compare` can trust: `model_definition` (everything
that defines the model except the seed and the corpus it is scored on), `model_id` (a short hash of
it: runs with equal ids are seeds of one model) and `model_name` (short and readable, for tables;
two models may share a name, never an id).

Before these tags, compare named a model from a few tags, and students of a softmax and of a CRF
teacher, a small and a full-size student, 10- and 50-epoch runs were averaged as seeds of one model."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from kd.losses.distill import get_loss
from kd.training.job_definition import TaggerJob

ID_LENGTH = 12  # hex digits: 48 bits, no collision to expect among the models of an experiment
# Short forms of the loss weights in model names: student-kl-a0.5-t1.
WEIGHT_LETTERS = {"alpha": "a", "beta": "b", "gamma": "g", "kappa": "k", "tau": "t"}
# What defines a tuned model (the refits of a study, one per corpus and seed), besides its search space.
TUNED_DEFINITION = ("output", "loss", "teacher_kind", "teacher_output", "ensemble", "train_splits", "eval_split",
                    "unlabelled")


def tagger_definition(job: TaggerJob, teacher: Any = None, search_space: str | None = None) -> dict[str, Any]:
    """The definition of the model a TaggerJob trains. `teacher`: a student's
    kd.cache.knowledge.TeacherKnowledge. `search_space`: for a tuned model (refit of a study), whose
    weights are tuned per corpus by design: the space, not the weights, defines it."""
    model = job.model.options()
    model["embeddings"] = Path(job.model.embeddings).name if job.model.embeddings else None
    training = {k: v for k, v in asdict(job.training).items() if k != "seed"}
    definition: dict[str, Any] = {"kind": job.model_kind, **model, **training,
                                  "train_splits": list(job.train_splits), "eval_split": job.eval_split}
    if job.model_kind == "mtm":
        definition.update(corpora=sorted(job.corpora), sampling=job.sampling, optimizer_state=job.optimizer_state)
    if job.distill is not None:
        weights = asdict(job.distill.weights())
        fields = get_loss(job.distill.loss).defining_fields()
        definition.update(loss=job.distill.loss, **{name: weights[name] for name in fields})
        if job.distill.unlabelled:
            # The recipe of the text, not its digest: students given each corpus's own text by one
            # recipe are one model across corpora (the digest is the run's unlabelled_sha256 tag).
            definition["unlabelled"] = job.distill.unlabelled_recipe or "file"
            if job.distill.unlabelled_ratio is not None:
                definition["unlabelled_ratio"] = job.distill.unlabelled_ratio
        if teacher is not None:
            definition.update(teacher_kind=",".join(sorted(set(teacher.teacher_kinds or ["bilstm"]))),
                              teacher_output=",".join(sorted(set(teacher.teacher_outputs))),
                              ensemble=teacher.ensemble)
    if search_space is not None:
        # A study tunes any of the options per corpus: what its refits share is what defines them.
        definition = {k: v for k, v in definition.items() if k in TUNED_DEFINITION}
        definition.update(kind="tuned", search_space=search_space)
    return definition


def transformer_definition(job: Any) -> dict[str, Any]:
    """The definition of a transformer teacher (kd.training.transformer_job.TransformerJob)."""
    training = {k: v for k, v in asdict(job.training).items() if k != "seed"}
    return {"kind": "transformer", "base": Path(job.base).name, "output": job.output, "dropout": job.dropout,
            **training, "train_splits": list(job.train_splits), "eval_split": job.eval_split,
            "corpora": sorted(job.corpora), "sampling": job.sampling, "optimizer_state": job.optimizer_state}


def file_digest(path: str) -> str:
    """The first 12 hex digits of the file's SHA-256 (the file is read by training anyway)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:ID_LENGTH]


def model_id(definition: dict[str, Any]) -> str:
    text = json.dumps(definition, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:ID_LENGTH]


def model_name(definition: dict[str, Any]) -> str:
    """`stm-crf`, `mtm-softmax`, `transformer-crf`, `student-kl-a0.5-t1`; a student's name adds
    `-crf` for a CRF student, `-Tcrf` for a CRF teacher and the ensemble when it has several teachers."""
    kind = definition["kind"]
    if kind not in ("student", "tuned"):
        return f"{kind}-{definition['output']}"
    parts = [kind, definition["loss"]]
    if kind == "tuned":
        parts.append(definition["search_space"])
    parts += [f"{letter}{definition[name]:g}" for name, letter in WEIGHT_LETTERS.items() if name in definition]
    if definition["output"] != "softmax":
        parts.append(definition["output"])
    if "crf" in definition.get("teacher_output", ""):
        parts.append("Tcrf")
    if definition.get("ensemble", "single") != "single":
        parts.append(definition["ensemble"])
    if "unlabelled" in definition:
        parts.append("unlabelled" + (f"{definition['unlabelled_ratio']:g}" if "unlabelled_ratio" in definition else ""))
    return "-".join(parts)


def identity_tags(definition: dict[str, Any], unlabelled: str | None = None) -> dict[str, str]:
    """The tags every training run carries; `model_definition` is what compare's legend shows.
    `unlabelled`: a student's text file, whose digest is kept for provenance (not identity)."""
    return {"model_id": model_id(definition), "model_name": model_name(definition),
            "model_definition": json.dumps(definition, sort_keys=True, separators=(",", ":")),
            **({"unlabelled_sha256": file_digest(unlabelled)} if unlabelled else {})}


def default_run_name(name: str, corpora: list[str], seed: int) -> str:
    """`stm-crf-NCBI-disease-s1`; a run over several corpora says how many (`mtm-softmax-6corpora-s1`).
    A student's name starts with its loss and weights (`kl-a0.5-b0.5-NCBI-disease-s1`): `student-`
    first pushed the weights out of the MLflow runs list's column; its tags say it is a student."""
    where = Path(corpora[0]).name if len(corpora) == 1 else f"{len(corpora)}corpora"
    return f"{name.removeprefix('student-')}-{where}-s{seed}"

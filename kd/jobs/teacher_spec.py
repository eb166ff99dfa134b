"""A plan's teachers: kd's BiLSTM multi-task model (`kind: bilstm`, the default) or a Hugging Face
encoder fine-tuned as a multi-task token classifier (`kind: transformer`, what `kd train-teacher
--kind transformer` trains), both read by caches, students and teacher columns alike.

    teachers:
      mtm: {epochs: 20}                                   # kind bilstm: the plan's defaults apply
      bert: {kind: transformer, base: ./models/MiniLM, learning_rate: 1e-4}

A transformer teacher takes from the plan's defaults only how a run trains and is scored (output,
batch_size, clip_norm, precision, splits, schedule): its learning rate, epochs and dropout are the
fine-tuning defaults (5e-5, 3, 0.1, as `kd train-teacher --kind transformer`) unless it gives them,
and the BiLSTM's size options are refused. `base` is a model folder, relative to the plan file like
data_dir, or a hub id (a value that is not a folder next to the plan and does not start with `/`,
`./`, `../` or `~`); a folder's cell identity is its name and the digest of its config.json."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kd.jobs.plan_file import (OPTION_KEYS, SCHEDULE_KEYS, SPLIT_KEYS, TRAINING_KEYS, Key, PlanFile, as_mapping,
                               as_names, check_known, check_rules, merge_options)
from kd.training.loop import TrainingOptions
from kd.training.transformer_job import TRANSFORMER_EPOCHS, TRANSFORMER_LEARNING_RATE

TEACHER_KINDS = ("bilstm", "transformer")
BILSTM_ONLY_KEYS = ("word_dim", "char_dim", "char_hidden", "shared_hidden", "task_hidden", "hidden_dim", "embeddings")
TRANSFORMER_KEYS = ("output", "dropout", *TRAINING_KEYS, *SPLIT_KEYS, *SCHEDULE_KEYS)
# What a transformer teacher takes from the plan's defaults: not the BiLSTM's sizes, nor its
# learning rate, epochs and dropout (Adam at the BiLSTM's 1e-3 wrecks a pretrained encoder).
TRANSFORMER_DEFAULT_KEYS = ("output", "batch_size", "clip_norm", "precision", *SPLIT_KEYS, *SCHEDULE_KEYS)
LOCAL_PREFIXES = ("/", "./", "../", "~", ".\\", "..\\")


@dataclass(frozen=True)
class TeacherSpec:
    name: str
    options: dict[str, Any]  # bilstm: the plan's defaults with the teacher's own options over them
    corpora: tuple[str, ...] = ()  # () = every corpus of the plan
    kind: str = "bilstm"
    base: str | None = None  # transformer: an absolute model folder, or a hub id
    base_identity: dict[str, str] | None = None  # what a cell's identity holds of the base


def parse_teacher(source: PlanFile, name: str, spec: Any, defaults: dict[str, Any]) -> TeacherSpec:
    key = ("teachers", name)
    spec = as_mapping(source, key, spec)
    kind = spec.get("kind", "bilstm")
    if kind not in TEACHER_KINDS:
        raise source.error(key + ("kind",), f"{kind!r}: use one of {', '.join(TEACHER_KINDS)}")
    corpora = tuple(as_names(source, key + ("corpora",), spec["corpora"])) if "corpora" in spec else ()
    if kind == "transformer":  # on one corpus too: no other kind of cell fine-tunes an encoder
        return _transformer_teacher(source, key, spec, defaults, corpora)
    if corpora and len(corpora) < 2:
        raise source.error(key + ("corpora",), "a multi-task teacher needs at least two corpora")
    if "base" in spec:
        raise source.error(key + ("base",), "applies to kind: transformer, not bilstm")
    check_known(source, key, spec, (*OPTION_KEYS, *SCHEDULE_KEYS, "corpora", "kind", "base"))
    options = merge_options(source, key, spec, OPTION_KEYS + SCHEDULE_KEYS, defaults)
    check_rules(source, key, options, distill=False)
    return TeacherSpec(name=name, options=options, corpora=corpora)


def _transformer_teacher(source: PlanFile, key: Key, spec: dict, defaults: dict[str, Any],
                         corpora: tuple[str, ...]) -> TeacherSpec:
    for option in spec:
        if option in BILSTM_ONLY_KEYS:
            raise source.error(key + (option,), "applies to kind bilstm, not transformer (the encoder is its base's)")
    check_known(source, key, spec, (*TRANSFORMER_KEYS, "corpora", "kind", "base"))
    if "base" not in spec:
        raise source.error(key + ("base",), "missing: the encoder to fine-tune, a model folder (relative to the "
                                            "plan file) or a hub id")
    inherited = {k: v for k, v in defaults.items() if k in TRANSFORMER_DEFAULT_KEYS}
    options = merge_options(source, key, spec, TRANSFORMER_KEYS, inherited)
    base, identity = resolve_base(source, key + ("base",), spec["base"])
    return TeacherSpec(name=key[-1], options=options, corpora=corpora, kind="transformer", base=base,
                       base_identity=identity)


def transformer_job_options(options: dict[str, Any], seed: int) -> dict[str, Any]:
    """TransformerJob's keyword arguments (but corpora, base and where it runs) from a transformer
    teacher's options; what they leave out keeps TransformerJob's own defaults."""
    training = {"epochs": TRANSFORMER_EPOCHS, "learning_rate": TRANSFORMER_LEARNING_RATE,
                **{k: v for k, v in options.items() if k in TRAINING_KEYS}}
    return {"training": TrainingOptions(seed=seed, **training),
            **{k: v for k, v in options.items() if k in ("output", "dropout", *SPLIT_KEYS, *SCHEDULE_KEYS)}}


def resolve_base(source: PlanFile, key: Key, value: Any) -> tuple[str, dict[str, str]]:
    """(the base as the job reads it, what the cell identity holds of it). A folder is taken
    relative to the plan file; its identity is its name as written (not a link's target) and the
    digest of its config.json, so two different encoders are two cells and a moved copy is the same."""
    if not isinstance(value, str) or not value.strip():
        raise source.error(key, f"{value!r}: expected a model folder or a hub id")
    path = Path(value).expanduser()
    folder = Path(os.path.normpath(path if path.is_absolute() else source.path.parent.absolute() / path))
    if folder.is_dir():
        config = folder / "config.json"
        if not config.is_file():
            raise source.error(key, f"{value}: no config.json in {folder} (not a Hugging Face model folder)")
        return str(folder), {"name": folder.name, "config_sha256": hashlib.sha256(config.read_bytes()).hexdigest()[:16]}
    if value.startswith(LOCAL_PREFIXES) or value.count("/") > 1:
        raise source.error(key, f"{value}: no such folder ({folder}; a folder is relative to the plan file)")
    # A hub id names a repository whose files may change upstream: its identity is the id alone.
    return value, {"hub_id": value}

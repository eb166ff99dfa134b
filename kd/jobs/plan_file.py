"""A plan file read as YAML, with the line of every key, and the checks of single values shared by
every section of a plan (kd.jobs.plan, kd.jobs.teacher_spec): each error one line naming the file,
the line and the key (`experiments/x.yaml:12: models.SM.alpha: ...`)."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import yaml

from kd.data.types import SPLITS
from kd.errors import KdError
from kd.training.distillation import DistillOptions
from kd.training.jobs import ModelOptions
from kd.training.loop import TrainingOptions

MODEL_KEYS = tuple(f.name for f in dataclasses.fields(ModelOptions))
TRAINING_KEYS = tuple(f.name for f in dataclasses.fields(TrainingOptions) if f.name != "seed")
SPLIT_KEYS = ("train_splits", "eval_split")
SCHEDULE_KEYS = ("sampling", "optimizer_state")
DISTILL_KEYS = ("loss", "alpha", "beta", "gamma", "kappa", "tau")
OPTION_KEYS = (*MODEL_KEYS, *TRAINING_KEYS, *SPLIT_KEYS)
Key = tuple[Any, ...]


class PlanFile:
    """The parsed YAML of a plan and the line of every key, for errors that point at it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise KdError(f"{path}: cannot read the plan ({error.strerror})") from None
        try:
            node = yaml.compose(self.text)
            self.data = yaml.safe_load(self.text)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            raise KdError(f"{where}: not valid YAML ({getattr(error, 'problem', None) or error})") from None
        self.lines = _key_lines(node) if node is not None else {}

    def error(self, key: Key, message: str) -> KdError:
        line = next((self.lines[key[:n]] for n in range(len(key), 0, -1) if key[:n] in self.lines), None)
        where = f"{self.path}:{line}" if line else str(self.path)
        return KdError(f"{where}: {_dotted(key)}: {message}")


def _key_lines(node: yaml.Node, prefix: Key = ()) -> dict[Key, int]:
    lines: dict[Key, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = prefix + (key_node.value,)
            lines[key] = key_node.start_mark.line + 1
            lines.update(_key_lines(value_node, key))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[prefix + (index,)] = item.start_mark.line + 1
            lines.update(_key_lines(item, prefix + (index,)))
    return lines


def _dotted(key: Key) -> str:
    text = ""
    for part in key:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def check_known(source: PlanFile, key: Key, mapping: dict, known: tuple[str, ...]) -> None:
    for name in mapping:
        if name not in known:
            raise source.error(key + (name,), f"unknown key (known: {', '.join(known)})")


def as_mapping(source: PlanFile, key: Key, value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise source.error(key, "expected a mapping of names")
    return value


def as_names(source: PlanFile, key: Key, value: Any, allow_empty: bool = False) -> list[str]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value) or (not value and not allow_empty):
        raise source.error(key, "expected a list of names")
    duplicates = sorted({v for v in value if value.count(v) > 1})
    if duplicates:
        raise source.error(key, f"{', '.join(duplicates)} given twice")
    return value


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def merge_options(source: PlanFile, key: Key, spec: dict, allowed: tuple[str, ...],
                  base: dict[str, Any]) -> dict[str, Any]:
    """`base` with the options of `spec` over it, each checked for its type; the rest of `spec` is
    the caller's."""
    options = dict(base)
    for name, value in spec.items():
        if name not in allowed:
            continue
        if name == "train_splits":
            value = as_names(source, key + (name,), value)
            if any(s not in SPLITS for s in value):
                raise source.error(key + (name,), f"{value}: use splits among {', '.join(SPLITS)}")
        elif name == "eval_split" and value not in SPLITS:
            raise source.error(key + (name,), f"{value!r}: use one of {', '.join(SPLITS)}")
        else:
            _check_type(source, key + (name,), name, value)
        options[name] = value
    return options


def _check_type(source: PlanFile, key: Key, name: str, value: Any) -> None:
    defaults = {**dataclasses.asdict(ModelOptions()), **dataclasses.asdict(TrainingOptions()),
                **{k: v for k, v in dataclasses.asdict(DistillOptions(cache_run="plan")).items() if k in DISTILL_KEYS}}
    default = defaults.get(name, "")
    if name in ("embeddings", "beta"):
        ok = value is None or isinstance(value, str if name == "embeddings" else (int, float))
    elif isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = is_int(value)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise source.error(key, f"{value!r}: expected {type(default).__name__ if default is not None else 'a value'}")


def check_options(source: PlanFile, key: Key, options: dict[str, Any], distill: bool) -> None:
    """The library's own checks of the options (ModelOptions, TrainingOptions, DistillOptions)."""
    try:
        ModelOptions(**{k: v for k, v in options.items() if k in MODEL_KEYS})
        TrainingOptions(**{k: v for k, v in options.items() if k in TRAINING_KEYS})
        if distill:
            DistillOptions(cache_run="plan", **{k: v for k, v in options.items() if k in DISTILL_KEYS})
    except KdError as error:
        raise source.error(key, library_message(error)) from None


def library_message(error: KdError) -> str:
    """A library error as a plan key's message: the option names without the CLI's dashes."""
    return str(error).replace("--", "").replace("give exactly one of cache RUN_ID", "")

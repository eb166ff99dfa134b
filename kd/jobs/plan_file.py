"""A plan file read as YAML, with the line of every key, and the checks of option values shared by
every section of a plan (kd.jobs.plan, kd.jobs.teacher_spec), kd.option_schema's: each error one
line naming the file, the line and the key (`experiments/x.yaml:12: models.SM.alpha -1: ...`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kd.errors import FieldError, KdError
from kd.losses.distill import DistillWeights, check_loss_weights
from kd.option_schema import check_combination, check_value, default, implied_beta, names_of

# A plan's option keys are the schema's; the seed is the plan's `seeds`.
MODEL_KEYS = names_of("model")
TRAINING_KEYS = tuple(name for name in names_of("training") if name != "seed")
SPLIT_KEYS = names_of("splits")
SCHEDULE_KEYS = names_of("schedule")
DISTILL_KEYS = names_of("distill")
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

    def where(self, key: Key) -> str:
        """`path:line` of the key, or of the nearest key above it that the file has."""
        line = next((self.lines[key[:n]] for n in range(len(key), 0, -1) if key[:n] in self.lines), None)
        return f"{self.path}:{line}" if line else str(self.path)

    def error(self, key: Key, message: str) -> KdError:
        return KdError(f"{self.where(key)}: {_dotted(key)}: {message}")

    def field_error(self, key: Key, error: KdError) -> KdError:
        """A library error about the options at `key`; a FieldError is named by its key below `key`
        (pointed at that key's line, or at `key`'s when the value comes from elsewhere)."""
        if not isinstance(error, FieldError):
            return self.error(key, str(error))
        named = key if key[-1:] == (error.field,) else key + (error.field,)
        return KdError(f"{self.where(named)}: {error.worded(_dotted(named))}")


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
    """`base` with the options of `spec` over it, each checked by the schema; the rest of `spec` is
    the caller's."""
    options = dict(base)
    for name, value in spec.items():
        if name in allowed:
            try:
                options[name] = check_value(name, value)
            except FieldError as error:
                raise source.field_error(key + (name,), error) from None
    return options


def check_rules(source: PlanFile, key: Key, options: dict[str, Any], distill: bool) -> None:
    """The rules between options (the schema's, and a student's loss and weights)."""
    try:
        check_combination(options)
        if distill:
            weights = {name: options.get(name, default(name)) for name in ("alpha", "beta", "gamma", "kappa", "tau")}
            weights["beta"] = implied_beta(weights["alpha"], weights["beta"])
            check_loss_weights(options.get("loss", default("loss")), DistillWeights(**weights))
    except KdError as error:
        raise source.field_error(key, error) from None

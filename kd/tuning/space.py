"""Search spaces as data: a YAML file with `params` (what to tune) and `fixed` (student options
that hold for every trial).

    fixed:  {loss: intermediate, output: softmax, epochs: 10, task_hidden: 100}
    params:
      alpha: {type: float, low: 0.0, high: 1.0}          # optional: log: true, step: 0.1
      epochs: {type: int, low: 5, high: 20}              # optional: log, step
      tau: {type: categorical, choices: [1, 2, 5]}
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kd.errors import FieldError, KdError
from kd.option_schema import OPTIONS, check_combination, check_value, names_of

# Options a space may set or tune: the schema's tunable ones, all but what a study decides itself:
# the seed (--seed), the teacher (--cache), pretrained vectors and unlabelled text (files, not values
# to search; the text's unlabelled_ratio is a value), and where a run trains and is scored.
DISTILL_KEYS, TRAINING_KEYS, MODEL_KEYS = ({name for name in names_of(group) if OPTIONS[name].tunable}
                                          for group in ("distill", "training", "model"))
KNOWN_KEYS = DISTILL_KEYS | TRAINING_KEYS | MODEL_KEYS


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: Any) -> bool:
    return _number(value) and float(value).is_integer()


def _check_value(where: str, name: str, value: Any) -> Any:
    """The schema's check, checked when the space is read: a bad value would otherwise surface as
    a failed trial long after the study started."""
    try:
        return check_value(name, value)
    except FieldError as error:
        raise KdError(error.worded(where)) from None


@dataclass(frozen=True)
class Parameter:
    name: str
    kind: str  # float, int or categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial) -> Any:
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return trial.suggest_categorical(self.name, list(self.choices))

    def grid_values(self) -> list[Any]:
        """The values a grid search visits: the choices, or a stepped range."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.step is None:
            raise KdError(f"grid search needs `choices` or a `step` for {self.name!r}")
        values, value = [], self.low
        while value <= self.high + 1e-12:
            values.append(int(value) if self.kind == "int" else round(value, 12))
            value += self.step
        return values


@dataclass(frozen=True)
class SearchSpace:
    name: str  # the file's stem, part of default study names
    path: str
    params: tuple[Parameter, ...]
    fixed: dict[str, Any]

    def grid(self) -> dict[str, list[Any]]:
        try:
            return {p.name: p.grid_values() for p in self.params}
        except KdError as error:
            raise KdError(f"{self.path}: {error}") from None


def _error(path: Path, key: str, message: str) -> KdError:
    return KdError(f"{path}: {key}: {message}")


def _parameter(path: Path, name: str, spec: Any) -> Parameter:
    key = f"params.{name}"
    if name not in KNOWN_KEYS:
        raise _error(path, key, f"unknown option (tunable: {', '.join(sorted(KNOWN_KEYS))})")
    if not isinstance(spec, dict):
        raise _error(path, key, "expected a mapping such as {type: float, low: 0, high: 1}")
    unknown = set(spec) - {"type", "low", "high", "log", "step", "choices"}
    if unknown:
        raise _error(path, key, f"unknown field(s) {', '.join(sorted(unknown))}")
    kind = spec.get("type")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise _error(path, f"{key}.choices", "expected a non-empty list")
        for choice in choices:
            _check_value(f"{path}: {key}.choices", name, choice)
        return Parameter(name, kind, choices=tuple(choices))
    if kind not in ("float", "int"):
        raise _error(path, f"{key}.type", f"expected float, int or categorical, not {kind!r}")
    if kind == "float" and OPTIONS[name].kind is int:
        raise _error(path, f"{key}.type", f"{name} takes integers: use type: int")
    for bound in ("low", "high"):
        if not _number(spec.get(bound)):
            raise _error(path, f"{key}.{bound}", "expected a (finite) number")
        if kind == "int" and not _integer(spec[bound]):
            raise _error(path, f"{key}.{bound}", f"{spec[bound]!r}: an int range needs integer bounds")
    low, high = float(spec["low"]), float(spec["high"])
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise _error(path, f"{key}.log", "expected true or false")
    if log and low <= 0:
        raise _error(path, f"{key}.low", "a log range must start above 0")
    for bound in ("low", "high"):
        _check_value(f"{path}: {key}.{bound}", name, spec[bound])
    if low > high:
        raise _error(path, key, f"low {low} is above high {high}")
    step = spec.get("step")
    if step is not None and (not _number(step) or step <= 0 or (kind == "int" and not _integer(step))):
        raise _error(path, f"{key}.step", f"expected a positive {'integer' if kind == 'int' else 'number'}")
    if log and step is not None:
        raise _error(path, key, "log and step cannot be combined")
    return Parameter(name, kind, low=low, high=high, log=log, step=None if step is None else float(step))


def load_search_space(path: str | Path) -> SearchSpace:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KdError(f"{path}: search space not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise KdError(f"{path}: cannot read ({error})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise KdError(f"{path}{where}: not valid YAML ({getattr(error, 'problem', error)})") from None
    if not isinstance(data, dict):
        raise KdError(f"{path}: expected a mapping with `params` (and optionally `fixed`)")
    unknown = set(data) - {"params", "fixed"}
    if unknown:
        raise _error(path, sorted(unknown)[0], "unknown top-level key (expected params, fixed)")
    params = data.get("params")
    if not isinstance(params, dict) or not params:
        raise _error(path, "params", "expected a non-empty mapping of option -> range")
    fixed = data.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise _error(path, "fixed", "expected a mapping of option -> value")
    for name, value in fixed.items():
        if name not in KNOWN_KEYS:
            raise _error(path, f"fixed.{name}", f"unknown option (known: {', '.join(sorted(KNOWN_KEYS))})")
        if name in params:
            raise _error(path, f"fixed.{name}", "both fixed and tuned")
        _check_value(f"{path}: fixed.{name}", name, value)
    space = SearchSpace(name=path.stem, path=str(path), params=tuple(_parameter(path, n, s) for n, s in params.items()),
                        fixed=dict(fixed))
    _check_implied_beta(path, space)
    return space


def _check_implied_beta(path: Path, space: SearchSpace) -> None:
    """Without beta in the space, a student's beta is 1 - alpha: the schema's rule on the largest
    alpha the space may give, now rather than in a failed trial."""
    tuned = {p.name: p for p in space.params}
    if "beta" in space.fixed or "beta" in tuned:
        return
    if "alpha" in tuned:
        alpha = tuned["alpha"]
        largest, key = max(alpha.choices) if alpha.kind == "categorical" else alpha.high, "params.alpha"
    else:
        largest, key = space.fixed.get("alpha", 0.0), "fixed.alpha"
    try:
        check_combination({"alpha": largest, "beta": None})
    except FieldError as error:
        raise KdError(error.worded(f"{path}: {key}")) from None


def parse_override(text: str) -> tuple[str, Any]:
    """`epochs=3` -> ("epochs", 3): the value read as YAML, as a space file would have it."""
    name, sep, value = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or not name:
        raise KdError(f"--set {text}: expected NAME=VALUE, e.g. epochs=3")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return name, parsed


def with_fixed(space: SearchSpace, overrides: dict[str, Any]) -> SearchSpace:
    """The space with some options fixed to other values (`kd tune --set epochs=3`): any option a
    space may fix, checked as in the file; an option the space tunes cannot be fixed this way."""
    tuned = {p.name for p in space.params}
    for name, value in overrides.items():
        where = f"--set {name}={value}"
        if name not in KNOWN_KEYS:
            raise KdError(f"{where}: unknown option (a space may fix {', '.join(sorted(KNOWN_KEYS))})")
        if name in tuned:
            raise KdError(f"{where}: {space.path} tunes {name} (params.{name}); copy the space to fix it")
        _check_value(f"--set {name}", name, value)
    fixed = {**space.fixed, **overrides}
    changed = SearchSpace(name=space.name, path=space.path, params=space.params, fixed=fixed)
    _check_implied_beta(Path(space.path), changed)
    return changed

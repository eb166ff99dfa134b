"""Search spaces as data: a YAML file with `params` (what to tune) and `fixed` (student options
that hold for every trial).

    fixed:  {loss: intermediate, output: softmax, epochs: 10, task_hidden: 100}
    params:
      alpha: {type: float, low: 0.0, high: 1.0}          # optional: log: true, step: 0.1
      epochs: {type: int, low: 5, high: 20}              # optional: log, step
      tau: {type: categorical, choices: [1, 2, 5]}
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kd.errors import KdError

# Options a space may set or tune: distillation weights and the student's training and model options.
DISTILL_KEYS = {"loss", "alpha", "beta", "gamma", "kappa", "tau"}
TRAINING_KEYS = {"epochs", "batch_size", "learning_rate", "clip_norm", "precision"}
MODEL_KEYS = {"output", "word_dim", "char_dim", "char_hidden", "shared_hidden", "task_hidden", "hidden_dim", "dropout"}
KNOWN_KEYS = DISTILL_KEYS | TRAINING_KEYS | MODEL_KEYS


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
        return Parameter(name, kind, choices=tuple(choices))
    if kind not in ("float", "int"):
        raise _error(path, f"{key}.type", f"expected float, int or categorical, not {kind!r}")
    for bound in ("low", "high"):
        if not isinstance(spec.get(bound), (int, float)) or isinstance(spec.get(bound), bool):
            raise _error(path, f"{key}.{bound}", "expected a number")
    low, high = float(spec["low"]), float(spec["high"])
    if low > high:
        raise _error(path, key, f"low {low} is above high {high}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise _error(path, f"{key}.log", "expected true or false")
    if log and low <= 0:
        raise _error(path, f"{key}.low", "a log range must start above 0")
    step = spec.get("step")
    if step is not None and (not isinstance(step, (int, float)) or step <= 0):
        raise _error(path, f"{key}.step", "expected a positive number")
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
    for name in fixed:
        if name not in KNOWN_KEYS:
            raise _error(path, f"fixed.{name}", f"unknown option (known: {', '.join(sorted(KNOWN_KEYS))})")
        if name in params:
            raise _error(path, f"fixed.{name}", "both fixed and tuned")
    return SearchSpace(name=path.stem, path=str(path), params=tuple(_parameter(path, n, s) for n, s in params.items()),
                       fixed=dict(fixed))

"""Every option of a training run, defined once: its name, type, default, range, help text and the
rules between options (beta from alpha). The click options (kd.cli.options), a plan's keys
(kd.jobs.plan_file), a search space's keys (kd.tuning.space) and the option dataclasses
(TaggerConfig, TrainingOptions, RunPlan, DistillOptions) derive from it, and a test checks the
MLproject against it. A bad value is a FieldError naming the option; each reader words where the
value came from (`--alpha`, `plan.yaml:12: models.SM.alpha`, `space.yaml: params.alpha.high`).

`None` is the one spelling of "use the default" for an option whose default depends on others
(beta: 1 - alpha); on the command line and in MLproject that is leaving the option out."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from kd.data.types import SPLITS
from kd.errors import FieldError

# The losses kd.losses.distill registers: kd's own, known before torch loads (a test checks the two
# agree), and any other that `register` adds (adding a loss stays one decorated function).
LOSS_NAMES = ["kl", "logits", "intermediate", "soft", "marginals", "encoder"]


@dataclass(frozen=True)
class Option:
    name: str
    kind: type  # int, float, str, or list (of names, among `choices`)
    default: Any
    group: str  # model, training, splits, schedule or distill: the dataclass that holds it
    help: str = ""
    low: float | None = None  # the smallest value allowed
    above: float | None = None  # values must be above it
    below: float | None = None  # values must be below it
    choices: Sequence[str] = ()
    optional: bool = False  # None is a value: "none" (embeddings) or "use the default" (beta)
    tunable: bool = True  # a search space may set it (not files, seeds or where a run trains)

    def check(self, value: Any) -> Any:
        """The value as the option holds it (3.0 -> 3 for an integer), or a FieldError."""
        if value is None and self.optional:
            return None
        value = self._typed(value)
        problem = self._out_of_range(value)
        if problem:
            raise FieldError(self.name, value, problem)
        return value

    def _typed(self, value: Any) -> Any:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if self.kind is int:
            if not number or not math.isfinite(value) or not float(value).is_integer():
                raise FieldError(self.name, value, "must be a whole number")
            return int(value)
        if self.kind is float:
            if not number or not math.isfinite(value):
                raise FieldError(self.name, value, "must be a (finite) number")
            return value  # an int stays one: a plan's cells are identified by the values as written
        if self.kind is list:
            names = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value
            if not isinstance(names, list) or not names or not all(isinstance(v, str) for v in names):
                raise FieldError(self.name, value, f"must be a list among {', '.join(self.choices)}")
            return names
        if not isinstance(value, str):
            raise FieldError(self.name, value, "must be text")
        return value

    def _out_of_range(self, value: Any) -> str | None:
        if self.kind is list:
            bad = [v for v in value if v not in self.choices]
            return f"use a subset of {', '.join(self.choices)}" if bad or len(set(value)) < len(value) else None
        if self.choices:
            return None if value in self.choices else "use " + (" or ".join(self.choices) if len(self.choices) == 2
                                                                  else "one of " + ", ".join(self.choices))
        if self.low is not None and self.below is not None and not self.low <= value < self.below:
            return f"must be in [{self.low:g}, {self.below:g})"
        if self.low is not None and value < self.low:
            return "must not be negative" if self.low == 0 else f"must be at least {self.low:g}"
        if self.above is not None and value <= self.above:
            return "must be positive" if self.above == 0 else f"must be above {self.above:g}"
        return None


def _size(name: str, default: int, help: str) -> Option:
    return Option(name, int, default, "model", help, low=1)


def _weight(name: str, default: float | None, help: str, optional: bool = False) -> Option:
    return Option(name, float, default, "distill", help, low=0, optional=optional)


OPTIONS: dict[str, Option] = {option.name: option for option in (
    Option("output", str, "softmax", "model", "Softmax per token or a linear-chain CRF.", choices=("softmax", "crf")),
    _size("word_dim", 100, "Word embedding size (the vectors' size with --embeddings)."),
    _size("char_dim", 25, "Character embedding size."),
    _size("char_hidden", 25, "Character BiLSTM size per direction."),
    _size("shared_hidden", 200, "Shared BiLSTM size per direction."),
    _size("task_hidden", 200, "Task BiLSTM size per direction."),
    _size("hidden_dim", 200, "Hidden layer before the logits."),
    Option("dropout", float, 0.5, "model", "Dropout rate.", low=0, below=1),
    Option("embeddings", str, None, "model", "Pretrained word vectors (word2vec text/binary or GloVe text).",
           optional=True, tunable=False),
    Option("epochs", int, 20, "training", "Training epochs.", low=1),
    Option("batch_size", int, 32, "training", "Sentences per batch.", low=1),
    Option("learning_rate", float, 1e-3, "training", "Adam learning rate.", above=0),
    Option("clip_norm", float, 5.0, "training", "Gradient norm clip (0: off).", low=0),
    Option("seed", int, 1, "training", "Seed of the initialisation and the batch order.", tunable=False),
    Option("precision", str, "fp32", "training", "bf16 autocasts matrix products and LSTMs to bfloat16 (fast on "
           "CPUs with avx512_bf16 or AMX, and on recent GPUs).", choices=("fp32", "bf16")),
    Option("train_splits", list, ["train", "devel"], "splits", "Splits to train on; without devel, devel F1 is "
           "scored each epoch and the best epoch kept.", choices=SPLITS, tunable=False),
    Option("eval_split", str, "test", "splits", "Split scored after training.", choices=SPLITS, tunable=False),
    Option("sampling", str, "uniform", "schedule", "How each step draws its corpus: uniformly, or in proportion "
           "to the corpus's batches.", choices=("uniform", "proportional"), tunable=False),
    Option("optimizer_state", str, "shared", "schedule", "Adam moments of the shared layers: one set for all "
           "corpora, or one per corpus's optimizer (the published description; measured worse, bench/README.md).",
           choices=("shared", "per-task"), tunable=False),
    Option("loss", str, "kl", "distill", "kl (the default: learns as fast as the STM, bench/README.md), logits "
           "(eq. 2), intermediate (eq. 3-4), soft (eq. 5), marginals, encoder (a transformer teacher's encoder "
           "states, weight --gamma).", choices=LOSS_NAMES),
    _weight("alpha", 0.5, "Weight of the hard-label term."),
    _weight("beta", None, "Weight of the logit/soft term (default: 1 - alpha).", optional=True),
    _weight("gamma", 0.0, "Weight of the task BiLSTM MSE (intermediate) or of the encoder MSE (encoder)."),
    _weight("kappa", 0.0, "Weight of the shared BiLSTM MSE."),
    Option("tau", float, 1.0, "distill", "Temperature of soft and kl.", above=0),
    Option("unlabelled_ratio", float, None, "distill", "Each epoch draws this many --unlabelled sentences per "
           "labelled sentence, continuing through the file from epoch to epoch (seeded by --seed); default: the "
           "whole file every epoch.", above=0, optional=True),
)}


def names_of(*groups: str) -> tuple[str, ...]:
    """The options of the given groups, in the schema's order."""
    return tuple(name for name, option in OPTIONS.items() if option.group in groups)


def default(name: str) -> Any:
    value = OPTIONS[name].default
    return list(value) if isinstance(value, list) else value


def check_value(name: str, value: Any) -> Any:
    return OPTIONS[name].check(value)


def add_loss_name(name: str) -> None:
    """A loss registered beyond kd's own becomes a value of `loss`."""
    if name not in LOSS_NAMES:
        LOSS_NAMES.append(name)


def implied_beta(alpha: float, beta: float | None) -> float:
    """beta, or 1 - alpha when it is left to its default."""
    return 1.0 - alpha if beta is None else beta


def check_combination(values: Mapping[str, Any]) -> None:
    """The rules between options: an alpha above 1 needs a beta, as its default 1 - alpha would be
    a negative weight (clipping it to 0 would silently train another objective than asked for)."""
    alpha = values.get("alpha", default("alpha"))
    if values.get("beta") is None and alpha > 1:
        raise FieldError("alpha", alpha, f"beta defaults to 1 - alpha, here {1 - alpha:g}, and a weight must not "
                                         "be negative; give beta, or an alpha of at most 1")


def check_fields(instance: Any) -> None:
    """Checks (and normalises) the fields of an option dataclass that the schema defines."""
    for field in fields(instance):
        if field.name in OPTIONS:
            setattr(instance, field.name, check_value(field.name, getattr(instance, field.name)))
    check_combination({f.name: getattr(instance, f.name) for f in fields(instance) if f.name in ("alpha", "beta")})

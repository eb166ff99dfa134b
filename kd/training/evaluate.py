"""Entity-level scoring (seqeval, strict IOB2 matching) of a model's predictions (kd.models.predict)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kd.tracking.metrics import corpus_metric


@dataclass
class EntityScores:
    precision: float
    recall: float
    f1: float
    per_type: dict[str, dict[str, float]]  # type -> precision, recall, f1, support

    def as_metrics(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}_precision": self.precision, f"{prefix}_recall": self.recall, f"{prefix}_f1": self.f1}


def entity_scores(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> EntityScores:
    """Micro-averaged and per-type entity scores; an entity counts only if its type and both
    boundaries match exactly."""
    # Imported here: seqeval loads scikit-learn, about 1 s of every command's start on an idle 2-core
    # machine, though only a finished training scores (bench/README.md, "Start-up").
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2

    report = classification_report([list(s) for s in gold], [list(s) for s in predicted], mode="strict",
                                   scheme=IOB2, output_dict=True, zero_division=0)
    micro = report.pop("micro avg")
    per_type = {name: {"precision": float(values["precision"]), "recall": float(values["recall"]),
                       "f1": float(values["f1-score"]), "support": float(values["support"])}
                for name, values in report.items() if not name.endswith(" avg")}
    return EntityScores(precision=float(micro["precision"]), recall=float(micro["recall"]),
                        f1=float(micro["f1-score"]), per_type=per_type)


def metric_names(split: str, scores: dict[str, EntityScores]) -> dict[str, float]:
    """`<split>_f1` etc.; with several corpora also `<corpus>/<split>_f1` (kd.tracking.metrics), the
    plain names then being macro averages over corpora."""
    if len(scores) == 1:
        return next(iter(scores.values())).as_metrics(split)
    metrics: dict[str, float] = {}
    for task, task_scores in scores.items():
        metrics.update({corpus_metric(name, task): value for name, value in task_scores.as_metrics(split).items()})
    for name in ("precision", "recall", "f1"):
        metrics[f"{split}_{name}"] = float(np.mean([getattr(s, name) for s in scores.values()]))
    return metrics


class Evaluator:
    """Scores every task of one split with `predict(task, dataset)` (a BiLSTM tagger's or a
    transformer's tags, one list per sentence) and keeps the predictions for logging."""

    def __init__(self, predict: Callable[[str, Any], list[list[str]]], datasets: dict[str, Any]) -> None:
        self.predict, self.datasets = predict, datasets

    def run(self) -> tuple[dict[str, EntityScores], dict[str, list[list[str]]]]:
        predictions = {task: self.predict(task, dataset) for task, dataset in self.datasets.items()}
        return ({task: entity_scores([s.tags for s in self.datasets[task].sentences], predicted)
                 for task, predicted in predictions.items()}, predictions)

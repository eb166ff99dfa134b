"""Entity-level scoring (strict IOB2 matching, as seqeval's) of a model's predictions (kd.models.predict)."""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kd.data.iob2 import iob2_spans
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
    boundaries match exactly. The figures are seqeval's strict IOB2 `classification_report`'s (the
    tests compare them), counted here: seqeval (its import loads scikit-learn) took 0.75 s of a
    one-epoch `kd train` on NCBI-disease, this count 0.01 s (bench/README.md, "Whole process")."""
    true_count, predicted_count, correct = Counter(), Counter(), Counter()
    for position, (gold_tags, predicted_tags) in enumerate(zip(gold, predicted, strict=True)):
        if len(gold_tags) != len(predicted_tags):
            raise ValueError(f"sentence {position}: {len(gold_tags)} gold tags, {len(predicted_tags)} predicted")
        true_spans, predicted_spans = set(iob2_spans(gold_tags)), set(iob2_spans(predicted_tags))
        true_count.update(label for _, _, label in true_spans)
        predicted_count.update(label for _, _, label in predicted_spans)
        correct.update(label for _, _, label in true_spans & predicted_spans)
    per_type = {label: _scores(correct[label], predicted_count[label], true_count[label])
                for label in sorted(true_count.keys() | predicted_count.keys())}
    micro = _scores(sum(correct.values()), sum(predicted_count.values()), sum(true_count.values()))
    return EntityScores(precision=micro["precision"], recall=micro["recall"], f1=micro["f1"], per_type=per_type)


def _scores(correct: int, predicted: int, true: int) -> dict[str, float]:
    """Precision, recall, F1 and support, 0 where a denominator is 0 (seqeval's zero_division=0)."""
    precision = correct / predicted if predicted else 0.0
    recall = correct / true if true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "support": float(true)}


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
    transformer's tags, one list per sentence) and keeps the predictions for logging. `remember`
    keeps the result of the best epoch seen, so that scoring the restored best weights again
    after training is not a second pass over the split (0.7-1 s for NCBI-disease's devel split)."""

    def __init__(self, predict: Callable[[str, Any], list[list[str]]], datasets: dict[str, Any]) -> None:
        self.predict, self.datasets = predict, datasets
        self.best: tuple[int, float, Any] | None = None  # epoch, score, run()'s result

    def run(self) -> tuple[dict[str, EntityScores], dict[str, list[list[str]]]]:
        predictions = {task: self.predict(task, dataset) for task, dataset in self.datasets.items()}
        return ({task: entity_scores([s.tags for s in self.datasets[task].sentences], predicted)
                 for task, predicted in predictions.items()}, predictions)

    def remember(self, epoch: int, score: float, result: Any) -> None:
        """Keeps `result` if `score` beats every epoch's before (the first of equal scores stays,
        as the training loop keeps the first best epoch's weights)."""
        if self.best is None or score > self.best[1]:
            self.best = (epoch, score, result)

    def recall(self, epoch: int | None) -> Any | None:
        """The remembered result of `epoch`, if it is the one kept."""
        return self.best[2] if self.best is not None and self.best[0] == epoch else None

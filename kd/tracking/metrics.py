"""Names of per-corpus metrics, shared by the jobs that log them and the readers (compare, students).

A multi-task run logs each corpus's scores as `<corpus>/<metric>` (`NCBI-disease/test_f1`): MLflow's
UI makes a chart section of each prefix before a slash, so a corpus's scores (and, with devel held
out, its devel F1 per epoch) sit together in one section. Runs logged before kd named them
`<metric>/<corpus>`, which made a section per metric holding one point per corpus; readers still
find those.
"""
from __future__ import annotations

from collections.abc import Mapping


def corpus_metric(metric: str, corpus: str) -> str:
    """The name under which a run logs `metric` (e.g. `test_f1`) of one corpus."""
    return f"{corpus}/{metric}"


def corpus_metric_value(metrics: Mapping[str, float], metric: str, corpus: str) -> float | None:
    """A run's `metric` on `corpus` from its per-corpus metrics, under today's name or the one
    runs logged before it; None when the run has neither."""
    for name in (corpus_metric(metric, corpus), f"{metric}/{corpus}"):
        if name in metrics:
            return metrics[name]
    return None

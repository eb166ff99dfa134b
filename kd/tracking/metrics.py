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


# Convergence: how much a run's devel F1 rose over its last epochs, logged at the end of training
# so that `kd compare` can mark cells of models stopped while still learning (issue 26: an eq. 2
# student at devel F1 0 for 8 of 10 epochs, then 0.049 -> 0.241 in the last two, was ranked as if
# it had converged).
LATE_GAIN = "devel_f1_late_gain"
LATE_EPOCHS = 2
# A rise of more than one F1 point over the last epochs is learning, not epoch-to-epoch noise.
UNCONVERGED_GAIN = 0.01


def late_gains(history: list[Mapping[str, float]], late_epochs: int = LATE_EPOCHS) -> dict[str, float]:
    """Per devel F1 metric of the epoch history (`devel_f1`, `<corpus>/devel_f1`): its last value
    minus the best value before the last `late_epochs` epochs (the first epoch's, for a run of
    at most that many epochs). Nothing for a run of one epoch: it cannot tell."""
    if len(history) < 2:
        return {}
    earlier = history[:-late_epochs] if len(history) > late_epochs else history[:1]
    gains = {}
    for name, last in history[-1].items():
        if name.split("/")[-1] != "devel_f1":
            continue
        before = [epoch[name] for epoch in earlier if name in epoch]
        if before:
            gains[name[: -len("devel_f1")] + LATE_GAIN] = float(last) - max(before)
    return gains


# MLflow's run page lists metrics in the order they were first logged (system metrics and sizes first,
# test F1 last of 22-130); its description, shown above them, carries the scores a user looks for.
DESCRIPTION_TAG = "mlflow.note.content"


def headline(final: Mapping[str, float]) -> str:
    """One line of a finished run's scores in F1 points: test, devel with its best epoch, and a
    warning while devel F1 still rose at the end (`late_gains`)."""
    parts = [f"{split} F1 {100 * final[f'{split}_f1']:.2f}" for split in ("test", "devel") if f"{split}_f1" in final]
    if "best_epoch" in final and "epochs_trained" in final:
        parts.append(f"best epoch {final['best_epoch']:g} of {final['epochs_trained']:g}")
    gain = final.get(LATE_GAIN)
    if gain is not None and gain > UNCONVERGED_GAIN:
        parts.append(f"not converged: devel F1 rose {100 * gain:+.2f} over the last {LATE_EPOCHS} epochs")
    return ", ".join(parts)

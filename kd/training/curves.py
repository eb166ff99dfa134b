"""The per-term loss curves of a run as one picture, so a user sees at a glance when one term of a
distillation loss dominates the others (the MSE of raw logits can be 20-30x the label term: issue 11)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from kd.utils.atomic import atomic_path

TERM_PREFIX = "train_"


def loss_terms(history: Sequence[Mapping[str, float]]) -> dict[str, list[float]]:
    """{term: value per epoch} for every `train_<term>` metric except the total."""
    names = [k[len(TERM_PREFIX):] for k in (history[0] if history else {}) if k.startswith(TERM_PREFIX)]
    return {name: [epoch.get(TERM_PREFIX + name, float("nan")) for epoch in history]
            for name in names if name != "loss"}


def weighted_shares(terms: Mapping[str, Sequence[float]], weights: Mapping[str, float]) -> dict[str, list[float]]:
    """Each weighted term's share of the sum of the weighted terms, per epoch (terms without a weight
    are left out; a zero weight is a zero share)."""
    weighted = {name: [weights[name] * value for value in values] for name, values in terms.items() if name in weights}
    epochs = len(next(iter(weighted.values()), []))
    totals = [sum(abs(values[epoch]) for values in weighted.values()) for epoch in range(epochs)]
    return {name: [abs(v) / total if total else 0.0 for v, total in zip(values, totals)]
            for name, values in weighted.items()}


def loss_terms_figure(history: Sequence[Mapping[str, float]], weights: Mapping[str, float]):
    """Each term per epoch (log scale) and each weighted term's share of the loss, as stacked bars
    (a stacked area of one epoch was an empty panel, issue 26); None without per-term values."""
    terms = loss_terms(history)
    if not terms:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = list(range(1, len(history) + 1))
    shares = weighted_shares(terms, weights) if weights else {}
    figure, axes = plt.subplots(1, 2 if shares else 1, figsize=(11 if shares else 6, 4), squeeze=False)
    for name, values in terms.items():
        axes[0][0].plot(epochs, values, marker="o", label=name)
    axes[0][0].set(xlabel="epoch", ylabel="per sentence (unweighted)", title="Loss terms", yscale="log")
    axes[0][0].legend()
    if shares:
        bottom = [0.0] * len(epochs)
        for name, values in shares.items():
            axes[0][1].bar(epochs, values, bottom=bottom, width=0.8, label=f"{name} (x{weights[name]:g})")
            bottom = [b + v for b, v in zip(bottom, values)]
        axes[0][1].set(xlabel="epoch", ylabel="share of the weighted loss", ylim=(0, 1),
                       title="Share of the weighted loss")
        axes[0][1].legend(loc="lower left")
    for axis in axes[0]:
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_xlim(0.5, len(epochs) + 0.5)  # whole epochs, not matplotlib's 0.945-1.05 around one point
    return figure


def plot_loss_terms(history: Sequence[Mapping[str, float]], weights: Mapping[str, float], path: Path) -> Path | None:
    """Writes `loss_terms_figure` as a PNG; None (nothing written) without per-term values."""
    figure = loss_terms_figure(history, weights)
    if figure is None:
        return None
    import matplotlib.pyplot as plt

    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return path

"""What a comparison can and cannot say: degenerate scores (every model equal, a model at zero
everywhere), models identical on every cell (counted once, not ranked as two), too few corpora or
models for a test, and cells of models still learning when training stopped. Each finding is a
one-line note that the report prints beside the numbers and the CLI repeats on stderr."""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from kd.tracking.metrics import LATE_EPOCHS, UNCONVERGED_GAIN

Cells = Mapping[tuple[str, str], Sequence[tuple[str | None, float]]]

# Friedman's chi-square approximation is poor below 5 corpora (Demsar 2006 gives N > 10, k > 5 as
# safe); a bootstrap over fewer than 3 corpora only ever resamples the same one or two differences.
FRIEDMAN_CORPORA = 5
INTERVAL_CORPORA = 3
# Two models are one when every score agrees, and there are at least this many: two published
# scores rounded to 0.1 tie by chance (AnatEM: STM and MTM both 86.7), three or more rarely do.
IDENTICAL_SCORES = 3


@contextlib.contextmanager
def quiet_numerics() -> Iterator[None]:
    """scipy's and numpy's warnings on degenerate input (`invalid value encountered`, a sample too
    small for the normal approximation) stay out of the user's terminal: the notes say it instead."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)
        yield


def all_equal(means: pd.DataFrame) -> bool:
    """Every cell the same score (all zero, typically): nothing to rank or test."""
    values = means.to_numpy(dtype=np.float64)
    values = values[np.isfinite(values)]
    return values.size > 0 and bool(np.all(values == values[0]))


def degenerate_notes(means: pd.DataFrame, scale: float) -> list[str]:
    """Notes on scores that carry no comparison: every cell equal, a model at zero on every corpus,
    a corpus on which every model scores the same."""
    if all_equal(means):
        value = float(np.nanmax(means.to_numpy())) * scale
        cause = " (the models learnt nothing: too few epochs or too little data?)" if value == 0 else ""
        return [f"every model scores {value:.2f} on every corpus{cause}: no model is best, and no rank, test or "
                f"interval below means anything"]
    notes = [f"{model} scores 0.00 on every corpus: it learnt nothing"
             for model in means.columns if bool((means[model] == 0).all())]
    notes += [f"{corpus}: every model scores {float(row.iloc[0]) * scale:.2f}, no model is best there"
              for corpus, row in means.iterrows() if row.nunique(dropna=True) == 1 and len(row) > 1]
    return notes


def identical_groups(cells: Cells, models: Sequence[str], corpora: Sequence[str]) -> list[list[str]]:
    """Groups (2+) of models whose runs give the same score for every corpus and seed: one model
    under two names (e.g. a student with alpha 1, beta 0 is the single-task model)."""
    def fingerprint(model: str) -> tuple:
        return tuple(tuple(sorted(cells.get((model, corpus), ()), key=lambda run: (str(run[0]), run[1])))
                     for corpus in corpora)

    groups: dict[tuple, list[str]] = {}
    for model in models:
        groups.setdefault(fingerprint(model), []).append(model)
    return [group for group in groups.values()
            if len(group) > 1 and sum(len(cells.get((group[0], c), ())) for c in corpora) >= IDENTICAL_SCORES]


def merged_label(group: Sequence[str]) -> str:
    return " = ".join(group)


def too_few_notes(models: int, corpora: int, alpha: float) -> list[str]:
    """Notes on the tests that cannot run, or cannot reach significance, with this many models and corpora."""
    notes = []
    if models < 2:
        return ["one model left: nothing to compare it with"]
    if models < 3:
        notes.append(f"Friedman test left out: it compares 3 or more models, here {models}; the pairwise tests "
                     "below answer whether one model beats the other")
    elif corpora < 2:
        notes.append("Friedman test left out: it needs 2 or more corpora, here 1")
    elif corpora < FRIEDMAN_CORPORA:
        notes.append(f"Friedman test on {corpora} corpora: its chi-square p-value is unreliable below "
                     f"{FRIEDMAN_CORPORA} corpora")
    if corpora < 2:
        notes.append("over-corpora tests (Wilcoxon, bootstrap, Bayesian) left out: 1 corpus; the per-corpus "
                     "seed tests below compare the models")
        return notes
    if corpora < INTERVAL_CORPORA:
        notes.append(f"no bootstrap interval: {corpora} corpora (needs {INTERVAL_CORPORA} or more; resampling "
                     f"{corpora} differences only returns their minimum and maximum)")
    smallest_p = 2.0 ** (1 - corpora)  # exact two-sided Wilcoxon, every difference of one sign
    if smallest_p >= alpha:
        notes.append(f"Wilcoxon over {corpora} corpora cannot reach p < {alpha:g} (its smallest p is "
                     f"{smallest_p:.3g}), and the Bayesian test's probabilities rest on {corpora} differences "
                     "and its prior: read both as weak evidence")
    return notes


def unconverged_counts(gains: Cells, models: Sequence[str], corpora: Sequence[str]) -> pd.DataFrame:
    """Corpus x model: how many seeds' devel F1 still rose by more than `UNCONVERGED_GAIN` over the
    last epochs (`kd.tracking.metrics.late_gains`); 0 where none did or no run logged it."""
    counts = pd.DataFrame(0, index=list(corpora), columns=list(models), dtype=int)
    for (model, corpus), runs in gains.items():
        if model in counts.columns and corpus in counts.index:
            counts.loc[corpus, model] = sum(1 for _, gain in runs if gain > UNCONVERGED_GAIN)
    return counts


def unconverged_note(counts: pd.DataFrame) -> list[str]:
    if not counts.to_numpy().any():
        return []
    cells = [f"{model} on {corpus} ({n})" for model in counts.columns for corpus, n in counts[model].items() if n]
    return [f"not converged (marked †): devel F1 still rose by more than {UNCONVERGED_GAIN * 100:g} point over the "
            f"last {LATE_EPOCHS} epochs in some seeds of {', '.join(cells)}; train longer before ranking them"]

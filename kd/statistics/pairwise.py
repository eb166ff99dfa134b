"""Pairwise comparisons of models: Wilcoxon signed-rank tests over corpora with Holm's step-down
correction (Benavoli, Corani and Mangili, JMLR 2016: unlike mean-rank post-hoc tests, whether A beats
B does not depend on the other models in the table), bootstrap intervals of mean differences over
corpora, and per corpus, tests of whether two models differ beyond seed noise."""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from kd.errors import KdError

# Fewer seeds than this make a per-corpus test weak: with 4 differences a paired t-test needs an
# effect of about 3 standard deviations to reach p < 0.05.
WEAK_SEEDS = 5


def model_pairs(models: Sequence[str]) -> list[tuple[str, str]]:
    """Every unordered pair, in the order the models are given."""
    return list(itertools.combinations(models, 2))


def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's (1979) step-down adjusted p-values: the i-th smallest of m times (m - i + 1), made
    non-decreasing in that order and capped at 1. NaN (no test) stays NaN and is not counted in m."""
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full_like(p, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    m = len(order)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    return adjusted


def snap(values: np.ndarray, unit: float) -> np.ndarray:
    """Rounds to a multiple of `unit`: differences of equal decimal scores (0.871 - 0.867 and
    0.812 - 0.808) then tie exactly instead of differing in the 17th digit, which would change the
    ranks the signed-rank test sees."""
    return np.round(values / unit) * unit


def _grouped_wilcoxon(differences: np.ndarray):
    """Yields (rows, (W, p)) of scipy's `wilcoxon` for each group of rows (pairs) that share the
    same signed-rank pattern. W and p depend on the differences only through the number of zeros,
    the ranks of the others (ties included) and the rank sum of the positive ones, so one scipy
    call per pattern gives every pair's result: about 56 calls instead of 4,950 for 100 models on
    10 corpora (scipy takes about 1 ms a call)."""
    if not len(differences):
        return
    ranks = stats.rankdata(np.where(differences == 0, np.inf, np.abs(differences)), axis=1)
    ranks = np.where(differences == 0, 0.0, ranks)
    positive = np.sum(ranks * (differences > 0), axis=1)
    keys = np.column_stack([np.sort(ranks, axis=1), positive])
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    for group, representative in enumerate(first):
        rows = np.flatnonzero(inverse.ravel() == group)
        if not np.any(differences[representative]):
            yield rows, (np.nan, 1.0)  # equal on every corpus: nothing to test
            continue
        result = stats.wilcoxon(differences[representative])
        yield rows, (float(result.statistic), float(result.pvalue))


@dataclass
class WilcoxonHolm:
    statistic: pd.DataFrame  # model x model: scipy's W (the smaller signed-rank sum)
    p_values: pd.DataFrame  # unadjusted two-sided p-values, 1 on the diagonal
    adjusted: pd.DataFrame  # Holm-adjusted over all k(k-1)/2 pairs


def wilcoxon_holm(scores: pd.DataFrame) -> WilcoxonHolm:
    """`scores`: one row per corpus, one column per model. scipy's `wilcoxon` with its defaults
    (zero differences dropped, exact distribution for small samples without ties or zeros, the
    normal approximation otherwise); a pair equal on every corpus gets p = 1, every pair p = NaN
    (untested) with one corpus."""
    models = list(scores.columns)
    matrix = scores.to_numpy(dtype=np.float64)
    unit = 1e-10 * max(float(np.nanmax(np.abs(matrix))), 1e-300)
    k = len(models)
    statistic, p_values, adjusted = np.full((k, k), np.nan), np.eye(k), np.eye(k)
    pairs = list(itertools.combinations(range(k), 2)) if len(matrix) > 1 else []  # one corpus: nothing to test
    if not pairs:
        p_values[~np.eye(k, dtype=bool)] = adjusted[~np.eye(k, dtype=bool)] = np.nan
    first, second = (np.array(side, dtype=int) for side in zip(*pairs)) if pairs else (np.zeros(0, int),) * 2
    differences = snap(matrix[:, first] - matrix[:, second], unit).T  # pairs x corpora
    for rows, (w, p) in _grouped_wilcoxon(differences):
        statistic[first[rows], second[rows]], p_values[first[rows], second[rows]] = w, p
    adjusted[first, second] = holm(p_values[first, second])
    for frame in (statistic, p_values, adjusted):
        frame[second, first] = frame[first, second]
    return WilcoxonHolm(*(pd.DataFrame(frame, index=models, columns=models)
                          for frame in (statistic, p_values, adjusted)))


def bootstrap_differences(points: pd.DataFrame, pairs: Sequence[tuple[str, str]], *, resamples: int = 2000,
                          confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Per pair (a, b): the mean over corpora of a - b and its percentile bootstrap interval,
    corpora resampled with replacement (the same resamples for every pair)."""
    if resamples < 1:
        raise KdError(f"resamples {resamples}: must be at least 1")
    if not 0 < confidence < 1:
        raise KdError(f"confidence {confidence}: must be between 0 and 1")
    matrix = points.to_numpy(dtype=np.float64)
    index = {m: i for i, m in enumerate(points.columns)}
    first = np.array([index[a] for a, _ in pairs], dtype=int)
    second = np.array([index[b] for _, b in pairs], dtype=int)
    draws = np.random.default_rng(seed).integers(0, matrix.shape[0], size=(resamples, matrix.shape[0]))
    means = matrix[draws].mean(axis=1)  # resamples x models
    tail = (1 - confidence) / 2
    low, high = np.empty(len(pairs)), np.empty(len(pairs))
    for start in range(0, len(pairs), 1024):  # bounds memory at resamples x 1024 differences
        chunk = slice(start, start + 1024)
        differences = means[:, first[chunk]] - means[:, second[chunk]]
        low[chunk], high[chunk] = np.quantile(differences, [tail, 1 - tail], axis=0)
    return pd.DataFrame({"a": [a for a, _ in pairs], "b": [b for _, b in pairs],
                         "mean_difference": matrix[:, first].mean(axis=0) - matrix[:, second].mean(axis=0),
                         "low": low, "high": high})

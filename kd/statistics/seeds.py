"""Per corpus: which pairs of models differ beyond seed noise.

The test is a paired t-test over matched seeds (the runs of both models with the same seed label):
runs with the same seed share the data order and, for models of one architecture, the initial
weights, so pairing removes that shared part of the variance. Where seeds cannot be matched (no
seed labels, a label twice in a cell, fewer than two seeds in common) it is Welch's t-test over the
seeds of each cell. Not Wilcoxon: with 5 seeds its smallest two-sided p-value is 2/32 = 0.0625, so
it could never flag a difference at alpha = 0.05; the t-test can, assuming roughly normal seed
noise. p-values are Holm-adjusted over the pairs within each corpus; fewer than 5 seeds flag the
test as weak.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from kd.statistics.pairwise import WEAK_SEEDS, holm

Runs = Mapping[tuple[str, str], Sequence[tuple[str | None, float]]]  # (model, corpus) -> (seed, value)


def seed_matrix(runs: Runs, models: Sequence[str], corpus: str) -> tuple[np.ndarray, np.ndarray]:
    """Models x seed labels of one corpus (NaN where a model lacks a seed), and per model whether
    its labels can be matched: all present and none repeated."""
    labels = sorted({seed for m in models for seed, _ in runs.get((m, corpus), ()) if seed is not None})
    column = {label: j for j, label in enumerate(labels)}
    values = np.full((len(models), len(labels)), np.nan)
    usable = np.zeros(len(models), dtype=bool)
    for i, model in enumerate(models):
        cell = runs.get((model, corpus), ())
        seeds = [seed for seed, _ in cell]
        usable[i] = bool(cell) and None not in seeds and len(set(seeds)) == len(seeds)
        if usable[i]:
            for seed, value in cell:
                values[i, column[seed]] = value
    return values, usable


def _paired(differences: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """t, degrees of freedom and two-sided p of the paired t-test on each row (NaN = unmatched)."""
    n = np.sum(~np.isnan(differences), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nansum(differences, axis=1) / n
        sd = np.sqrt(np.nansum((differences - mean[:, None]) ** 2, axis=1) / (n - 1))
        t = mean / (sd / np.sqrt(n))
    return t, n - 1.0, n


def _welch(mean: np.ndarray, var: np.ndarray, count: np.ndarray, first: np.ndarray,
           second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """t and Welch-Satterthwaite degrees of freedom of each pair, from the cells' mean, variance and n."""
    with np.errstate(invalid="ignore", divide="ignore"):
        va, vb = var[first] / count[first], var[second] / count[second]
        t = (mean[first] - mean[second]) / np.sqrt(va + vb)
        df = (va + vb) ** 2 / (va ** 2 / (count[first] - 1) + vb ** 2 / (count[second] - 1))
    return t, df


def _p_value(t: np.ndarray, df: np.ndarray, mean_difference: np.ndarray) -> np.ndarray:
    """Two-sided p; a difference with no seed variance at all is 0 (any shift) or 1 (none)."""
    p = 2 * stats.t.sf(np.abs(t), np.where(np.isfinite(df) & (df > 0), df, 1.0))
    degenerate = ~np.isfinite(t) & (df > 0)
    p[degenerate] = np.where(mean_difference[degenerate] == 0, 1.0, 0.0)
    p[~(df > 0)] = np.nan
    return p


def corpus_seed_tests(runs: Runs, models: Sequence[str], corpus: str, pairs: Sequence[tuple[str, str]],
                      scale: float, alpha: float) -> pd.DataFrame:
    """One row per pair: the mean difference (times `scale`), the test used, the seeds it used,
    t, p, Holm-adjusted p, whether the pair differs at `alpha` and whether the test is weak."""
    index = {m: i for i, m in enumerate(models)}
    first = np.array([index[a] for a, _ in pairs], dtype=int)
    second = np.array([index[b] for _, b in pairs], dtype=int)
    values, usable = seed_matrix(runs, models, corpus)
    cells = [np.array([v for _, v in runs.get((m, corpus), ())], dtype=np.float64) for m in models]
    count = np.array([len(c) for c in cells], dtype=np.float64)
    mean = np.array([c.mean() if len(c) else np.nan for c in cells])
    var = np.array([c.var(ddof=1) if len(c) > 1 else np.nan for c in cells])
    t_paired, df_paired, matched = _paired(values[first] - values[second])
    paired = usable[first] & usable[second] & (matched >= 2)
    t_welch, df_welch = _welch(mean, var, count, first, second)
    t = np.where(paired, t_paired, t_welch)
    df = np.where(paired, df_paired, df_welch)
    difference = mean[first] - mean[second]
    p = _p_value(t, df, difference)
    p_holm = holm(p)
    seeds = np.where(paired, matched, np.minimum(count[first], count[second]))
    return pd.DataFrame({
        "corpus": corpus, "a": [a for a, _ in pairs], "b": [b for _, b in pairs],
        "mean_difference": difference * scale,
        "test": np.where(np.isnan(p), "none", np.where(paired, "paired t", "welch t")),
        "seeds": seeds.astype(int), "t": t, "p_value": p, "p_holm": p_holm,
        "differs": p_holm < alpha, "weak": seeds < WEAK_SEEDS})


def seed_tests(runs: Runs, models: Sequence[str], corpora: Sequence[str], pairs: Sequence[tuple[str, str]],
               scale: float, alpha: float) -> pd.DataFrame:
    """`corpus_seed_tests` for every corpus, one table."""
    return pd.concat([corpus_seed_tests(runs, models, c, pairs, scale, alpha) for c in corpora], ignore_index=True)

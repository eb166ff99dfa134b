"""Per corpus, did a model pass its baseline (a student its teacher, its single-task model)?

For each (model, baseline) pair and corpus: the mean over seeds of the model minus the mean over
seeds of the baseline, in F1 points, with a percentile bootstrap interval over seeds (each model's
seed scores resampled independently, with replacement) and a verdict: passed (the interval is above
0), behind (below 0) or not separable (it holds 0). A cell of one seed has no interval: nothing to
resample. Unlike the pairwise intervals of kd.statistics.pairwise, which resample corpora for the
mean over corpora, these say something of each corpus.
"""
from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from kd.errors import FieldError

Cells = Mapping[tuple[str, str], Sequence[tuple[str | None, float]]]  # (model, corpus) -> (seed, value)

RESAMPLES = 2000
CONFIDENCE = 0.95
PASSED, BEHIND, NOT_SEPARABLE, NO_INTERVAL = "passed", "behind", "not separable", "no interval"
VERDICTS = (PASSED, BEHIND, NOT_SEPARABLE, NO_INTERVAL)
COLUMNS = ["model", "baseline", "corpus", "model_mean", "baseline_mean", "difference", "low", "high",
           "model_seeds", "baseline_seeds", "verdict"]


def verdict(low: float, high: float) -> str:
    """passed, behind or not separable, from the interval of model - baseline; no interval: NaN."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return NO_INTERVAL
    return PASSED if low > 0 else BEHIND if high < 0 else NOT_SEPARABLE


def parse_versus(groups: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """(model, baseline) pairs from `MODEL:BASELINE[,BASELINE...]` groups, several to a value when
    separated by `;` (one value is all `mlflow run -P versus=...` passes)."""
    pairs = []
    for group in (g.strip() for value in groups for g in value.split(";") if g.strip()):
        model, _, baselines = (part.strip() for part in group.partition(":"))
        names = [b.strip() for b in baselines.split(",") if b.strip()]
        if not model or not names:
            raise FieldError("versus", group, "expected MODEL:BASELINE[,BASELINE...] (groups separated by ;)")
        pairs += [(model, name) for name in names]
    return tuple(pairs)


def check_versus(pairs: Sequence[tuple[str, str]], models: Sequence[str], dropped: Sequence[str] = ()) -> None:
    """Every model and baseline named is one of `models` (not one `dropped` for lacking a corpus), and
    no model is its own baseline."""
    for model, baseline in pairs:
        for name in (model, baseline):
            if name in dropped:
                raise FieldError("versus", name, "left out of the comparison: missing on some corpora")
            if name not in models:
                raise FieldError("versus", name, f"not a model of the comparison (models: {', '.join(models)})")
        if model == baseline:
            raise FieldError("versus", f"{model}:{baseline}", "a model cannot be its own baseline")


def resampled_means(values: np.ndarray, rng: np.random.Generator, resamples: int) -> np.ndarray:
    """The means of `resamples` samples of `values` drawn with replacement, each of their size."""
    draws = rng.integers(0, len(values), size=(resamples, len(values)))
    return values[draws].mean(axis=1)


def pair_rng(seed: int, model: str, baseline: str, corpus: str) -> np.random.Generator:
    """A generator of its own per (pair, corpus): a pair's interval does not change when other
    models or corpora join the comparison."""
    return np.random.default_rng([seed, *(zlib.crc32(name.encode()) for name in (model, baseline, corpus))])


def versus_table(cells: Cells, pairs: Sequence[tuple[str, str]], corpora: Sequence[str], *, scale: float = 1.0,
                 resamples: int = RESAMPLES, confidence: float = CONFIDENCE, seed: int = 0) -> pd.DataFrame:
    """One row per (model, baseline, corpus), pairs in the order given, corpora within each:
    both means, their difference and its percentile bootstrap interval in points (scores times
    `scale`), the seeds of each side and the verdict. NaN interval where a side has one seed."""
    if resamples < 1:
        raise FieldError("resamples", resamples, "must be at least 1")
    if not 0 < confidence < 1:
        raise FieldError("confidence", confidence, "must be between 0 and 1")
    tail = (1 - confidence) / 2
    rows = []
    for model, baseline in pairs:
        for corpus in corpora:
            x = np.array([v for _, v in cells[(model, corpus)]], dtype=np.float64) * scale
            y = np.array([v for _, v in cells[(baseline, corpus)]], dtype=np.float64) * scale
            low = high = np.nan
            if len(x) > 1 and len(y) > 1:
                rng = pair_rng(seed, model, baseline, corpus)
                differences = resampled_means(x, rng, resamples) - resampled_means(y, rng, resamples)
                low, high = np.quantile(differences, [tail, 1 - tail])
            rows.append((model, baseline, corpus, x.mean(), y.mean(), x.mean() - y.mean(), float(low), float(high),
                         len(x), len(y), verdict(low, high)))
    return pd.DataFrame(rows, columns=COLUMNS)


def versus_counts(table: pd.DataFrame) -> pd.DataFrame:
    """Per pair, in the table's order: the number of corpora and of each verdict."""
    counts = pd.crosstab([table["model"], table["baseline"]], table["verdict"]).reindex(columns=list(VERDICTS),
                                                                                        fill_value=0)
    order = list(dict.fromkeys(zip(table["model"], table["baseline"])))
    counts = counts.reindex(pd.MultiIndex.from_tuples(order, names=["model", "baseline"]), fill_value=0)
    counts.insert(0, "corpora", counts.sum(axis=1))
    return counts.reset_index()


def count_line(row: Mapping) -> str:
    """`passed on 4 of 6 corpora, behind on 1, not separable on 1` (and `no interval on 2 (one seed)`)."""
    text = f"passed on {row[PASSED]} of {row['corpora']} corpora"
    for name, note in ((BEHIND, ""), (NOT_SEPARABLE, ""), (NO_INTERVAL, " (one seed)")):
        if row[name]:
            text += f", {name} on {row[name]}{note}"
    return text

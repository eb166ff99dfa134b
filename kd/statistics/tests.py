"""Comparing models over corpora: the Friedman test, average ranks, post-hoc pairwise tests (Wilcoxon
signed-rank with Holm's correction, or scikit-posthocs' mean-rank tests) and the Nemenyi critical
difference (Demsar 2006), on a corpora x models matrix of scores."""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
from scipy import stats

from kd.errors import KdError
from kd.statistics.pairwise import wilcoxon_holm

# wilcoxon-holm first: the default (pairwise, so a pair's result does not depend on the other models).
POSTHOC_TESTS = ("wilcoxon-holm", "conover", "nemenyi", "siegel", "miller")


@dataclass
class FriedmanResult:
    statistic: float
    p_value: float
    average_ranks: pd.Series  # model -> average rank (1 = best)
    p_values: pd.DataFrame  # model x model post-hoc p-values
    critical_difference: float  # Nemenyi CD at alpha
    alpha: float
    posthoc: str = "wilcoxon-holm"  # the test that gave p_values


def average_ranks(scores: pd.DataFrame) -> pd.Series:
    """Rank of each model on each corpus (1 = highest score, ties share the mean rank), averaged."""
    ranks = scores.rank(axis=1, ascending=False, method="average")
    return ranks.mean(axis=0)


def nemenyi_critical_difference(models: int, corpora: int, alpha: float) -> float:
    """q_alpha * sqrt(k (k + 1) / (6 N)), q_alpha the studentized range quantile over sqrt(2)."""
    q_alpha = stats.studentized_range.ppf(1 - alpha, models, math.inf) / math.sqrt(2)
    return float(q_alpha * math.sqrt(models * (models + 1) / (6 * corpora)))


def posthoc_p_values(scores: pd.DataFrame, test: str) -> pd.DataFrame:
    """model x model p-values of the post-hoc test; for wilcoxon-holm, Holm-adjusted."""
    import scikit_posthocs as sp

    if test == "wilcoxon-holm":
        return wilcoxon_holm(scores).adjusted
    functions = {"conover": sp.posthoc_conover_friedman, "nemenyi": sp.posthoc_nemenyi_friedman,
                 "siegel": sp.posthoc_siegel_friedman, "miller": sp.posthoc_miller_friedman}
    if test not in functions:
        raise KdError(f"--posthoc {test}: use one of {', '.join(POSTHOC_TESTS)}")
    p_values = functions[test](scores.to_numpy())
    p_values.index = p_values.columns = list(scores.columns)
    return p_values.astype(float)


def friedman(scores: pd.DataFrame, posthoc: str = "wilcoxon-holm", alpha: float = 0.05) -> FriedmanResult:
    """`scores`: one row per corpus, one column per model, higher is better."""
    corpora, models = scores.shape
    if models < 3:
        raise KdError(f"the Friedman test needs at least three models; found {models}: {', '.join(scores.columns)}")
    if corpora < 2:
        raise KdError(f"the Friedman test needs at least two corpora; found {corpora}: {', '.join(scores.index)}")
    if not 0 < alpha < 1:
        raise KdError(f"--alpha {alpha}: must be between 0 and 1")
    statistic, p_value = stats.friedmanchisquare(*(scores[column].to_numpy() for column in scores.columns))
    return FriedmanResult(statistic=float(statistic), p_value=float(p_value), average_ranks=average_ranks(scores),
                          p_values=posthoc_p_values(scores, posthoc),
                          critical_difference=nemenyi_critical_difference(models, corpora, alpha), alpha=alpha,
                          posthoc=posthoc)

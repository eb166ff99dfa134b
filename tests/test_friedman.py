"""kd.statistics.tests.friedman against scipy and against the formulas of Demsar (2006) computed
by hand from the ranks."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from kd.errors import KdError
from kd.statistics.tests import average_ranks, friedman, nemenyi_critical_difference


def scores(seed: int = 0, corpora: int = 8, models: int = 4) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    values = rng.normal(0.8, 0.03, size=(corpora, models)) + np.linspace(0, 0.02, models)
    return pd.DataFrame(values, index=[f"c{i}" for i in range(corpora)], columns=[f"m{j}" for j in range(models)])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_statistic_and_p_value_match_scipy_and_the_rank_formula(seed):
    table = scores(seed)
    result = friedman(table)
    expected = stats.friedmanchisquare(*(table[c].to_numpy() for c in table.columns))
    assert result.statistic == pytest.approx(expected.statistic)
    assert result.p_value == pytest.approx(expected.pvalue)
    # Demsar's chi2_F = 12 N / (k (k + 1)) * (sum_j R_j^2 - k (k + 1)^2 / 4), R_j the average ranks (no ties here).
    n, k = table.shape
    ranks = np.array([sorted(row, reverse=True).index(value) + 1 for row in table.to_numpy() for value in row])
    mean_ranks = ranks.reshape(n, k).mean(axis=0)
    chi2 = 12 * n / (k * (k + 1)) * (np.sum(mean_ranks ** 2) - k * (k + 1) ** 2 / 4)
    assert result.statistic == pytest.approx(chi2)
    assert result.p_value == pytest.approx(stats.chi2.sf(chi2, k - 1))
    assert list(result.average_ranks) == pytest.approx(list(mean_ranks))


def test_ties_share_the_mean_rank():
    table = pd.DataFrame([[0.9, 0.9, 0.5], [0.7, 0.8, 0.9]], index=["a", "b"], columns=["x", "y", "z"])
    assert list(average_ranks(table)) == pytest.approx([(1.5 + 3) / 2, (1.5 + 2) / 2, (3 + 1) / 2])


def test_critical_difference_matches_demsars_table():
    # Demsar (2006), Table 5(a): q_0.05 for k = 4 models is 2.569; CD = q sqrt(k (k + 1) / (6 N)).
    assert nemenyi_critical_difference(4, 10, 0.05) == pytest.approx(2.569 * math.sqrt(4 * 5 / 60), abs=1e-3)


@pytest.mark.parametrize("shape, needle", [((8, 2), "three models"), ((1, 4), "two corpora")])
def test_too_few_models_or_corpora_are_refused(shape, needle):
    with pytest.raises(KdError, match=needle):
        friedman(scores(corpora=shape[0], models=shape[1]))

"""Bayesian comparison of two models over corpora with a region of practical equivalence (ROPE):
the Bayesian signed-rank test (Benavoli et al., ICML 2014; JMLR 2017) and, with seeds, the
hierarchical test over corpora x seeds (Corani et al., Machine Learning 2017), as in `baycomp`.

Scores and the ROPE are in F1 points here (the caller scales fractions by 100), so a ROPE of 0.5
means half an F1 point whatever scale the runs logged.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kd.errors import FieldError, KdError

SAMPLES = 50000  # baycomp's default number of posterior samples
PRIOR = 0.5  # baycomp's default prior strength of the signed-rank test


@dataclass
class BayesianResult:
    """P(a better), P(practically equal), P(b better) by the more than the ROPE."""

    test: str
    a: str
    b: str
    p_a: float
    p_rope: float
    p_b: float
    sample: np.ndarray  # samples x 3 posterior, for the plot


def _heaviside(values: np.ndarray, threshold: float) -> np.ndarray:
    return (values > threshold).astype(np.float64) + 0.5 * (values == threshold)


def signed_rank_sample(x: np.ndarray, y: np.ndarray, rope: float, *, seed: int, samples: int = SAMPLES,
                       prior: float = PRIOR) -> np.ndarray:
    """`baycomp.SignedRankTest.sample(x, y, rope, random_state=seed)`, vectorized: the same
    Dirichlet weights drawn from the same RandomState, and each sample's quadratic forms as one
    matrix product instead of a Python loop over 50,000 samples (0.4 s a pair in baycomp)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise KdError(f"scores of shapes {x.shape} and {y.shape}: need two vectors of one length")
    if rope < 0:
        raise FieldError("rope", rope, "the ROPE cannot be negative")
    differences = np.hstack(([0.0], y - x))
    sums = differences[:, None] + differences[None, :]
    weights = np.ones(len(differences))
    weights[0] = prior
    draws = np.random.RandomState(seed).dirichlet(weights, samples)
    result = np.zeros((samples, 3))

    def quadratic(matrix: np.ndarray) -> np.ndarray:
        # w' M w per sample through one BLAS product: np.einsum("si,ij,sj->s") took 7.6 ms a call.
        return ((draws @ matrix) * draws).sum(axis=1)

    if rope > 0:
        result[:, 0] = quadratic(_heaviside(-sums, 2 * rope))
        result[:, 2] = quadratic(_heaviside(sums, 2 * rope))
        result[:, 1] = 1 - result[:, 0] - result[:, 2]
    else:
        result[:, 2] = quadratic(_heaviside(sums, 0.0))
        result[:, 0] = 1 - result[:, 2]
    return result


def probabilities(sample: np.ndarray) -> tuple[float, float, float]:
    """baycomp's reading of a posterior sample: the share of samples in which each region
    (a better, equal, b better) has the largest probability."""
    from baycomp.multiple import Posterior

    p_left, p_rope, p_right = Posterior(sample).probs(with_rope=True)
    return float(p_left), float(p_rope), float(p_right)


def signed_rank(a: str, b: str, x: np.ndarray, y: np.ndarray, rope: float, *, seed: int,
                samples: int = SAMPLES) -> BayesianResult:
    """The Bayesian signed-rank test of model `a` (scores `x`, one per corpus) against `b` (`y`).
    The differences are rounded to 1e-9 points first: with F1 reported to 0.1, pairs of differences
    that sum to exactly twice the ROPE are common, and whether they count as inside it must not
    depend on float noise (0.871 * 100 - 0.867 * 100 is not 0.4)."""
    difference = np.round(np.asarray(y, dtype=np.float64) - np.asarray(x, dtype=np.float64), 9)
    sample = signed_rank_sample(np.zeros_like(difference), difference, rope, seed=seed, samples=samples)
    return BayesianResult("signed-rank", a, b, *probabilities(sample), sample=sample)


def hierarchical(a: str, b: str, x: np.ndarray, y: np.ndarray, rope: float, *, seed: int,
                 samples: int = 2000, chains: int = 4) -> BayesianResult:
    """baycomp's hierarchical test on corpora x seeds arrays (rows: corpora; columns: seeds),
    with Stan seeded: baycomp's own wrapper passes no seed to Stan, so this builds its model with
    `random_seed` and reads the posterior exactly as `baycomp.HierarchicalTest.sample` does.
    Needs pystan (`pip install kd[hierarchical]`)."""
    try:
        import stan
    except ImportError as error:
        raise FieldError("hierarchical", None, f"needs pystan (pip install 'kd[hierarchical]'): {error}") from None
    import baycomp.multiple
    from scipy import stats

    difference = np.asarray(y, dtype=np.float64) - np.asarray(x, dtype=np.float64)
    if difference.ndim != 2 or difference.shape[1] < 2:
        raise KdError(f"scores of shape {difference.shape}: the hierarchical test needs corpora x seeds, 2+ seeds")
    scale = float(np.mean(np.std(difference, axis=1))) or 1.0  # baycomp's scaled_data
    rope, difference = rope / scale, difference / scale
    data = _stan_data(difference, rope, np.random.RandomState(seed))
    code = (Path(baycomp.multiple.__file__).parent / "hierarchical-t-test.stan").read_text()
    fit = stan.build(code, data=data, random_seed=seed).sample(num_samples=samples, num_chains=chains)
    mu, std, nu = fit["delta0"][0], fit["std0"][0], fit["nu"][0]
    sample = np.empty((len(nu), 3))
    sample[:, 2] = 1 - stats.t.cdf(rope, nu, mu, std)
    sample[:, 0] = stats.t.cdf(-rope, nu, mu, std)
    sample[:, 1] = 1 - sample[:, 0] - sample[:, 2]
    return BayesianResult("hierarchical", a, b, *probabilities(sample), sample=sample)


def _stan_data(difference: np.ndarray, rope: float, random_state: np.random.RandomState) -> dict:
    """baycomp's prepare_stan_data with runs=1 (so rho = 1 / seeds) and its default priors."""
    corpora, seeds = difference.shape
    half = seeds // 2
    for row in difference:  # baycomp's guard against zero variance within a corpus
        if np.var(row) == 0:
            row[:half] = random_state.uniform(-rope, rope, half)
            row[half:] = -row[:half]
    std_within = float(np.mean(np.std(difference, axis=1)))
    std_among = float(np.std(np.mean(difference, axis=1))) if corpora > 1 else std_within
    largest = float(np.max(np.abs(difference)))
    return dict(x=difference, Nsamples=seeds, q=corpora, rho=1 / seeds, deltaLow=-largest, deltaHi=largest,
                lowerAlpha=1, upperAlpha=2, lowerBeta=0.01, upperBeta=0.1, stdLow=0, stdHi=std_within * 1000,
                std0Low=0, std0Hi=std_among * 1000)


# The posterior figure: wide enough for two model names of up to LABEL_CHARACTERS characters a line
# at 10 points under the triangle's corners (baycomp's own plot is 354-480 px wide and long names
# overlapped there), and shown by MLflow at its natural size.
FIGURE_INCHES = (7.0, 6.0)
LABEL_CHARACTERS = 30
DPI = 110  # the saved picture, cropped to its contents, is then about 620 x 540 px


def posterior_figure(result: BayesianResult):
    """The posterior in baycomp's simplex (corners: a better, practically equal, b better), from
    all of `result.sample`, labelled with `result`'s own probabilities: the numbers of the figure
    are those of the tables, read from the same sample."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def project(points: np.ndarray) -> np.ndarray:  # (left, right, top) -> the plane, as baycomp
        left, right, top = points.T / np.sqrt(3)
        return np.column_stack(((right - left) * np.cos(np.pi / 6) + 0.5,
                                top - (left + right) * np.sin(np.pi / 6) + 1 / (2 * np.sqrt(3))))

    figure, axes = plt.subplots(figsize=FIGURE_INCHES)
    axes.set_aspect("equal")
    axes.plot([0, 0.5, 1, 0], [0, np.sqrt(3) / 2, 0, 0], color="tab:orange")
    centre = project(np.array([[1 / 3, 1 / 3, 1 / 3]]))[0]
    for x, y in project(np.array([[0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])):
        axes.plot([centre[0], x], [centre[1], y], color="tab:orange")
    points = project(result.sample[:, [0, 2, 1]])
    axes.hexbin(points[:, 0], points[:, 1], mincnt=1, cmap="Blues_r", gridsize=60)

    def label(name: str, p: float) -> str:
        return "\n".join(textwrap.wrap(name, LABEL_CHARACTERS)) + f"\nbetter: {p:.3f}"

    axes.text(0, -0.04, label(result.a, result.p_a), ha="center", va="top", fontsize=10)
    axes.text(1, -0.04, label(result.b, result.p_b), ha="center", va="top", fontsize=10)
    axes.text(0.5, np.sqrt(3) / 2 + 0.02, f"practically equal: {result.p_rope:.3f}", ha="center", va="bottom",
              fontsize=10)
    axes.set(xlim=(-0.3, 1.3), ylim=(-0.35, 1.0))
    axes.axis("off")
    axes.set_title(f"{result.test} test: share of posterior samples in which each region is the most probable",
                   fontsize=9)
    return figure


def plot(result: BayesianResult, path: Path) -> str:
    """Writes `posterior_figure` as a PNG."""
    import matplotlib.pyplot as plt

    from kd.utils.atomic import atomic_path

    figure = posterior_figure(result)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(figure)
    return str(path)


def bayesian_pairs(models: Sequence[str], ranks: dict[str, float], all_pairs_up_to: int) -> list[tuple[str, str]]:
    """Every pair with up to `all_pairs_up_to` models; beyond that, each model against the best
    ranked one: thousands of posteriors (and plots) are neither readable nor affordable."""
    if len(models) <= all_pairs_up_to:
        return [(a, b) for i, a in enumerate(models) for b in models[i + 1:]]
    best = min(models, key=lambda m: ranks[m])
    return [(best, m) for m in models if m != best]

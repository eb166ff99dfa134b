"""What `kd compare` and `kd plan report` ask of a comparison (`kd.statistics.compare.compare_runs`)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class BayesianOptions:
    """`rope` in F1 points (0: no Bayesian tests); `hierarchical` adds the corpora x seeds test
    (needs pystan); every pair while there are at most `all_pairs_up_to` models, else each
    model against the best ranked."""

    rope: float = 0.5
    hierarchical: bool = False
    samples: int = 50000
    all_pairs_up_to: int = 10


@dataclass(frozen=True)
class ComparisonOptions:
    """What a comparison is asked: the `metric`, the tags/params naming a model (`model_keys`;
    None: kd's own tags) and a corpus, the post-hoc test and `alpha`, whether models missing on
    some corpus are left out (else an error), the Bayesian tests, the `seed` of the bootstraps
    and the Bayesian tests, and the (model, baseline) pairs whose per-corpus difference over seeds
    is reported (`versus`, kd.statistics.versus)."""

    metric: str = "test_f1"
    model_keys: tuple[str, ...] | None = None
    corpus_key: str = "tags.task"
    posthoc: str = "wilcoxon-holm"
    alpha: float = 0.05
    drop_incomplete: bool = False
    bayesian: BayesianOptions = field(default_factory=BayesianOptions)
    seed: int = 0
    versus: tuple[tuple[str, str], ...] = ()

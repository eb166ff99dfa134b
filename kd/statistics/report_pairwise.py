"""The pairwise part of a comparison's outputs: Wilcoxon-Holm, bootstrap intervals, Bayesian tests
and per-corpus seed tests, as a table, Markdown sections, JSON and the Bayesian plots."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kd.statistics.bayesian import plot
from kd.statistics.compare import Comparison
from kd.statistics.pairwise import WEAK_SEEDS

# Per corpus, the Markdown lists at most this many differing pairs; seed_tests.csv has them all.
LISTED_PER_CORPUS = 50


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN: an untested statistic is null."""
    return None if value is None or not np.isfinite(value) else float(value)


def pairwise_table(comparison: Comparison) -> pd.DataFrame:
    """One row per pair (a, b): mean difference a - b in F1 points with its bootstrap interval,
    Wilcoxon W, p and Holm-adjusted p over corpora."""
    table = comparison.effects.copy()
    w = comparison.wilcoxon
    # Positional lookups: one .loc per pair and statistic took 0.55 s for the 4,950 pairs of 100 models.
    rows = table["a"].map({m: i for i, m in enumerate(w.statistic.index)}).to_numpy()
    columns = table["b"].map({m: i for i, m in enumerate(w.statistic.columns)}).to_numpy()
    for name, frame in (("wilcoxon_w", w.statistic), ("p_value", w.p_values), ("p_holm", w.adjusted)):
        table[name] = frame.loc[w.statistic.index, w.statistic.columns].to_numpy()[rows, columns]
    return table


def bayesian_table(comparison: Comparison, plots: dict[str, str] | None = None) -> pd.DataFrame:
    rows = [{"test": r.test, "a": r.a, "b": r.b, "p_a_better": r.p_a, "p_equivalent": r.p_rope,
             "p_b_better": r.p_b, "plot": (plots or {}).get(_plot_key(i, r.test), "")}
            for i, r in enumerate(comparison.bayesian)]
    return pd.DataFrame(rows, columns=["test", "a", "b", "p_a_better", "p_equivalent", "p_b_better", "plot"])


def _plot_key(index: int, test: str) -> str:
    return f"bayesian_{index:04d}_{test}"


def write_bayesian_plots(comparison: Comparison, out: Path) -> dict[str, str]:
    """One baycomp posterior plot per Bayesian test, in out/bayesian/ (older plots removed there,
    so the folder logged to the run holds only this comparison's)."""
    folder = out / "bayesian"
    if folder.is_dir():
        for old in folder.glob("*.png"):
            old.unlink()
    if not comparison.bayesian:
        return {}
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for index, result in enumerate(comparison.bayesian):
        slug = re.sub(r"[^A-Za-z0-9.=-]+", "_", f"{result.a}__vs__{result.b}")[:80]
        written[_plot_key(index, result.test)] = plot(result, folder / f"{index:04d}_{result.test}_{slug}.png")
    return written


def json_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """A table's rows as JSON values: NaN as null, numpy scalars as Python's."""
    return [{k: (finite_or_none(v) if isinstance(v, (float, np.floating)) else
                 bool(v) if isinstance(v, (bool, np.bool_)) else int(v) if isinstance(v, np.integer) else v)
             for k, v in row.items()} for row in frame.to_dict("records")]


def pairwise_json(comparison: Comparison, plots: dict[str, str]) -> dict[str, Any]:
    w, options = comparison.wilcoxon, comparison.bayesian_options

    def matrix(frame: pd.DataFrame) -> dict[str, dict[str, float | None]]:
        return {m: {n: finite_or_none(v) for n, v in row.items()} for m, row in frame.iterrows()}

    return {
        "points_scale": comparison.scale, "seed": comparison.seed,
        "wilcoxon_holm": {"statistic": matrix(w.statistic), "p_values": matrix(w.p_values),
                          "p_holm": matrix(w.adjusted)},
        "pairs": json_records(pairwise_table(comparison)),
        "bayesian": {"rope": options.rope, "samples": options.samples, "hierarchical": options.hierarchical,
                     "results": json_records(bayesian_table(comparison, plots))},
        "seed_tests": {"weak_below_seeds": WEAK_SEEDS, "results": json_records(comparison.seed_tests)},
    }


def _p(value: float) -> str:
    return "-" if not np.isfinite(value) else f"{value:.4g}"


def pairwise_markdown(comparison: Comparison) -> list[str]:
    """The Markdown sections after the table: pairwise tests and effect sizes, Bayesian tests,
    and per corpus the pairs that differ beyond seed noise."""
    alpha = comparison.result.alpha
    lines = ["", f"## Pairs over corpora (mean difference A - B in F1 points, 95% bootstrap interval over "
                 f"corpora; Wilcoxon signed-rank, Holm-adjusted over {len(comparison.effects)} pair{'s' if len(comparison.effects) != 1 else ''})", "",
             "| A | B | mean difference | 95% interval | W | p | p (Holm) |", "|---|---|---:|---|---:|---:|---:|"]
    for row in pairwise_table(comparison).itertuples():
        mark = " *" if row.p_holm < alpha else ""
        interval = f"[{row.low:+.2f}, {row.high:+.2f}]" if np.isfinite(row.low) else "n/a"
        lines.append(f"| {row.a} | {row.b} | {row.mean_difference:+.2f} | {interval} | "
                     f"{_p(row.wilcoxon_w)} | {_p(row.p_value)} | {_p(row.p_holm)}{mark} |")
    diagram = "; the critical difference diagram joins the others" if np.isfinite(
        comparison.result.critical_difference) else ""
    lines.append(f"\n\\* A and B differ at alpha = {alpha:g}{diagram}.")
    lines += _bayesian_markdown(comparison) + _seed_markdown(comparison)
    return lines


def _bayesian_markdown(comparison: Comparison) -> list[str]:
    options = comparison.bayesian_options
    if not comparison.bayesian:
        why = "off (--bayesian 0)" if options.rope == 0 else "left out (see the notes above)"
        return ["", f"Bayesian tests: {why}."]
    lines = ["", f"## Bayesian tests (ROPE = {options.rope:g} F1 points, {options.samples} posterior samples, "
                 f"seed {comparison.seed})", "",
             "| test | A | B | P(A better) | P(practically equal) | P(B better) |", "|---|---|---|---:|---:|---:|"]
    for r in comparison.bayesian:
        lines.append(f"| {r.test} | {r.a} | {r.b} | {r.p_a:.3f} | {r.p_rope:.3f} | {r.p_b:.3f} |")
    return lines


def _seed_markdown(comparison: Comparison) -> list[str]:
    tests = comparison.seed_tests
    lines = ["", "## Differences beyond seed noise, per corpus",
             "", f"Paired t-test over matched seeds (Welch's t-test where seeds do not match), Holm-adjusted "
                 f"per corpus at alpha = {comparison.result.alpha:g}; (weak): fewer than {WEAK_SEEDS} seeds.", ""]
    for corpus, group in tests.groupby("corpus", sort=False):
        differing = group[group["differs"]]
        untested = int((group["test"] == "none").sum())
        shown = [f"{r.a} {'>' if r.mean_difference > 0 else '<'} {r.b} ({r.mean_difference:+.2f}, {r.test}, "
                 f"{r.seeds} seeds, p {_p(r.p_holm)}{', weak' if r.weak else ''})"
                 for r in differing.head(LISTED_PER_CORPUS).itertuples()]
        more = f"; and {len(differing) - LISTED_PER_CORPUS} more (seed_tests.csv)" if len(differing) > LISTED_PER_CORPUS else ""
        note = f" ({untested} pair{'s' if untested != 1 else ''} untested: fewer than 2 seeds)" if untested else ""
        lines.append(f"- {corpus}: {'; '.join(shown) if shown else 'no pair differs'}{more}{note}")
    return lines

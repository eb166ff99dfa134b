"""The per-corpus verdicts of kd.statistics.versus in a comparison's outputs: a Markdown section,
results.json's `versus` and versus.csv."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from kd.statistics.pairwise import WEAK_SEEDS
from kd.statistics.report_pairwise import json_records
from kd.statistics.versus import CONFIDENCE, RESAMPLES, count_line, versus_counts

TITLE = "Per corpus: did each model pass its baselines?"
# Why fewer than WEAK_SEEDS seeds are marked weak: with equal true means and normal seed noise, the
# 95% percentile bootstrap interval left out 0 (a false passed/behind) in 34% of 2,000 simulated
# cells with 2 seeds a side, 19% with 3, 12.5% with 5 and 7.4% with 10 (measured with versus_table);
# resampling a few seeds underestimates their spread.
FALSE_VERDICTS = {2: 34, 3: 19, 5: 12.5, 10: 7.4}


def _interval(low: float, high: float) -> str:
    return f"[{low:+.2f}, {high:+.2f}]" if np.isfinite(low) else "none (one seed)"


def versus_markdown(table: pd.DataFrame | None, seed: int) -> list[str]:
    """The section: a count line per pair, then one row per (model, baseline, corpus)."""
    if table is None or table.empty:
        return []
    lines = ["", f"## {TITLE}", "",
             f"Model - baseline per corpus, in F1 points: mean over seeds minus mean over seeds, with a "
             f"{CONFIDENCE:.0%} percentile bootstrap interval ({RESAMPLES} resamples of each side's seeds, "
             f"seed {seed}). Passed: the interval is above 0; behind: below 0; not separable: it holds 0.", ""]
    lines += [f"- {row['model']} vs {row['baseline']}: {count_line(row)}"
              for row in versus_counts(table).to_dict("records")]
    lines += ["", "| model | baseline | corpus | model mean | baseline mean | difference | 95% interval | seeds | verdict |",
              "|---|---|---|---:|---:|---:|---|---|---|"]
    for r in table.itertuples():
        weak = " (weak)" if np.isfinite(r.low) and min(r.model_seeds, r.baseline_seeds) < WEAK_SEEDS else ""
        lines.append(f"| {r.model} | {r.baseline} | {r.corpus} | {r.model_mean:.2f} | {r.baseline_mean:.2f} | "
                     f"{r.difference:+.2f} | {_interval(r.low, r.high)} | {r.model_seeds}/{r.baseline_seeds} | "
                     f"{r.verdict}{weak} |")
    if ((table[["model_seeds", "baseline_seeds"]].min(axis=1) < WEAK_SEEDS) & np.isfinite(table["low"])).any():
        rates = ", ".join(f"{p:g}% with {n}" for n, p in FALSE_VERDICTS.items())
        lines += ["", f"(weak): fewer than {WEAK_SEEDS} seeds on a side. Resampling few seeds understates their "
                      f"spread: between two models equal but for seed noise, the interval missed 0 in {rates} "
                      f"seeds a side (simulated, normal noise; 5% expected)."]
    return lines


def versus_json(table: pd.DataFrame | None, seed: int) -> dict[str, Any] | None:
    """results.json's `versus`: the settings, the rows and the counts per pair; None without pairs."""
    if table is None or table.empty:
        return None
    return {"resamples": RESAMPLES, "confidence": CONFIDENCE, "seed": seed, "weak_below_seeds": WEAK_SEEDS,
            "results": json_records(table), "counts": json_records(versus_counts(table))}

"""Writing a comparison out: tables (md, csv, tex), results.json, figures, and the comparison run."""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kd.errors import KdError
from kd.statistics.compare import Comparison, compare_runs, fetch_runs
from kd.statistics.comparison_options import ComparisonOptions
from kd.statistics.report_pairwise import (bayesian_table, finite_or_none, pairwise_json, pairwise_markdown,
                                          pairwise_table, write_bayesian_plots)
from kd.statistics.report_versus import versus_json, versus_markdown
from kd.utils.atomic import atomic_file, atomic_path

FORMATS = ("md", "csv", "tex", "json")

def summary_rows(comparison: Comparison) -> pd.DataFrame:
    """The table as shown: corpora, then the average and the average-variance rows."""
    scale = comparison.scale
    shown = comparison.table.mean * scale
    shown.loc["Average"] = shown.mean(axis=0)
    shown.loc["Average variance"] = (comparison.table.var * scale * scale).mean(axis=0)
    return shown


def _cell(value: float) -> str:
    return "n/a" if not np.isfinite(value) else f"{value:.2f}"


def best_columns(row: pd.Series) -> set[str]:
    """The models with the row's highest value; none when every model has it (nothing is best)."""
    values = row.to_numpy(dtype=np.float64)
    best = np.isclose(values, np.nanmax(values)) if np.isfinite(values).any() else np.zeros(len(values), bool)
    return set() if best.all() else set(row.index[best])


def shown_cells(comparison: Comparison, corpus: str, row: pd.Series, bold: str) -> list[str]:
    """A row's cells as text: best in `bold` (a format with one {}), † after an unconverged cell."""
    best = best_columns(row) if corpus != "Average variance" and not comparison.degenerate else set()
    unconverged = comparison.unconverged
    marked = set() if unconverged is None or corpus not in unconverged.index else \
        {m for m in row.index if unconverged.loc[corpus, m]}
    return [(bold.format(f"{row[m]:.2f}") if m in best else _cell(row[m])) + (" †" if m in marked else "")
            for m in row.index]


def friedman_line(comparison: Comparison) -> list[str]:
    r = comparison.result
    if not np.isfinite(r.statistic):
        return []
    lines = [f"Friedman chi2 = {r.statistic:.4f}, p = {r.p_value:.4g}; Nemenyi critical difference = "
             f"{r.critical_difference:.3f} ranks."]
    if r.p_value >= r.alpha:
        lines.append(f"The Friedman test does not reject equal performance at alpha = {r.alpha:g}: "
                     "post-hoc differences are not evidence on their own.")
    return lines


def render_markdown(comparison: Comparison) -> str:
    rows = summary_rows(comparison)
    models = list(rows.columns)
    scale_note = " (x100)" if comparison.scale == 100 else ""
    lines = [f"| corpus | {' | '.join(models)} |", "|---|" + "---:|" * len(models)]
    for corpus, row in rows.iterrows():
        lines.append(f"| {corpus} | {' | '.join(shown_cells(comparison, str(corpus), row, '**{}**'))} |")
    ranks = comparison.result.average_ranks
    lines.append(f"| Average rank | {' | '.join(f'{ranks[m]:.2f}' for m in models)} |")
    lines += ["", f"{comparison.metric}{scale_note}, mean over seeds; best per row in bold."]
    lines += friedman_line(comparison)
    if comparison.notes:
        lines += ["", "Read with care:", ""] + [f"- {note}." for note in comparison.notes]
    if comparison.warnings:
        lines += [""] + [f"Warning: {w}." for w in comparison.warnings]
    lines += legend_markdown(comparison)
    if comparison.table.var.isna().any().any():
        lines += ["", "Average variance is over the cells with 2 or more seeds (n/a: none)."]
    return "\n".join(lines + pairwise_markdown(comparison) + versus_markdown(comparison.versus, comparison.seed)) + "\n"


def legend_markdown(comparison: Comparison) -> list[str]:
    """What each model label stands for: its full definition (kd's default grouping)."""
    if not comparison.legend:
        return []
    return ["", "Models:", ""] + [f"- **{label}**: {definition}" for label, definition in comparison.legend.items()]


def _tex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"),
                 ("$", r"\$"), ("{", r"\{"), ("}", r"\}")):
        text = text.replace(a, b)
    return text


def render_latex(comparison: Comparison) -> str:
    rows = summary_rows(comparison)
    models = list(rows.columns)
    lines = [r"\begin{tabular}{l" + "r" * len(models) + "}", r"\hline",
             "Corpus & " + " & ".join(_tex_escape(m) for m in models) + r" \\", r"\hline"]
    for corpus, row in rows.iterrows():
        if corpus == "Average":
            lines.append(r"\hline")
        cells = [c.replace("†", r"$^\dagger$") for c in shown_cells(comparison, str(corpus), row, r"\textbf{{{}}}")]
        lines.append(_tex_escape(str(corpus)) + " & " + " & ".join(cells) + r" \\")
    lines += [r"\hline", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def results_json(comparison: Comparison, files: Mapping[str, str], run_id: str | None) -> dict[str, Any]:
    r, t = comparison.result, comparison.table
    plots = {k: v for k, v in files.items() if k.startswith("bayesian_")}
    return {**pairwise_json(comparison, plots), "posthoc": r.posthoc, "alpha": r.alpha,
        "metric": comparison.metric, "friedman_statistic": finite_or_none(r.statistic),
        "friedman_p_value": finite_or_none(r.p_value), "critical_difference": finite_or_none(r.critical_difference),
        "versus": versus_json(comparison.versus, comparison.seed), "validity": comparison.notes, "degenerate": comparison.degenerate,
        "unconverged": {} if comparison.unconverged is None else {
            corpus: {m: int(n) for m, n in row.items() if n} for corpus, row in comparison.unconverged.iterrows()
            if row.any()}, "average_ranks": {m: float(v) for m, v in r.average_ranks.items()},
        "posthoc_p_values": {m: {n: finite_or_none(v) for n, v in row.items()} for m, row in r.p_values.iterrows()},
        "cells": {corpus: {model: {"mean": float(t.mean.loc[corpus, model]), "std": finite_or_none(t.std.loc[corpus, model]),
                                   "var": finite_or_none(t.var.loc[corpus, model]), "n": int(t.count.loc[corpus, model])}
                           for model in t.mean.columns} for corpus in t.mean.index},
        "models": list(t.mean.columns), "legend": comparison.legend, "corpora": list(t.mean.index), "runs_used": comparison.runs_used,
        "dropped_models": comparison.dropped_models, "warnings": comparison.warnings, "files": dict(files), "comparison_run_id": run_id,
    }


# Figure sizes per model, so labels never overlap whatever the number of models: a label row of
# the critical-difference diagram, and a row and column of the p-value matrix (8-point labels).
CD_INCHES_PER_LABEL = 0.3
MATRIX_INCHES_PER_MODEL = 0.22
CHARACTER_INCHES = 0.075  # an 8-point character, for room beside the diagrams


def write_figures(comparison: Comparison, out: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scikit_posthocs as sp

    r = comparison.result
    models = len(r.average_ranks)
    if not np.isfinite(r.critical_difference):
        # No Friedman test (2 models, 1 corpus, or every score equal): no rank diagram to draw, and
        # scikit-posthocs would draw one with an axis of 2.99-3.01; remove a previous comparison's.
        for stale in ("cd_diagram.png", "significance.png"):
            (out / stale).unlink(missing_ok=True)
        return {}
    label_inches = CHARACTER_INCHES * max(len(str(m)) for m in r.average_ranks.index)
    written = {}
    # The diagram puts half the labels on each side, one row each.
    figure, axes = plt.subplots(figsize=(6 + 2 * label_inches, 1.2 + CD_INCHES_PER_LABEL * math.ceil(models / 2)))
    # Cliques come from the post-hoc p-values (Holm-adjusted Wilcoxon by default) at --alpha.
    sp.critical_difference_diagram(r.average_ranks, r.p_values, alpha=r.alpha, ax=axes,
                                   label_props={"fontsize": 8})
    axes.set_title(f"Average ranks ({comparison.metric}); bars join models not significantly different "
                   f"({r.posthoc})", fontsize=9)
    written["cd_diagram"] = _save(figure, out / "cd_diagram.png")
    side = max(3.0, MATRIX_INCHES_PER_MODEL * models)
    figure, axes = plt.subplots(figsize=(side + label_inches + 1.5, side + label_inches))
    sp.sign_plot(r.p_values, ax=axes)
    axes.set_title("Post-hoc p-values")
    axes.tick_params(axis="x", labelrotation=90, labelsize=8)
    axes.tick_params(axis="y", labelsize=8)
    written["significance"] = _save(figure, out / "significance.png")
    return written


def _save(figure, path: Path) -> str:
    import matplotlib.pyplot as plt

    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return str(path)


def check_formats(formats: Sequence[str]) -> None:
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise KdError(f"--format {','.join(formats)}: use a comma-separated subset of {', '.join(FORMATS)}")


def write_outputs(comparison: Comparison, out: Path, formats: Sequence[str]) -> dict[str, str]:
    check_formats(formats)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    if "md" in formats:
        files["md"] = _write_text(out / "table.md", render_markdown(comparison))
    if "tex" in formats:
        files["tex"] = _write_text(out / "table.tex", render_latex(comparison))
    if "csv" in formats:
        rows = summary_rows(comparison)
        rows.loc["Average rank"] = comparison.result.average_ranks
        files["csv"] = _write_text(out / "table.csv", rows.to_csv(index_label="corpus", float_format="%.6g"))
        t = comparison.table
        scale = comparison.scale  # in F1 points, as the tables
        long = pd.DataFrame([{"corpus": c, "model": m, "mean": t.mean.loc[c, m] * scale,
                              "std": t.std.loc[c, m] * scale, "var": t.var.loc[c, m] * scale * scale,
                              "n": int(t.count.loc[c, m])}
                             for c in t.mean.index for m in t.mean.columns])
        files["cells_csv"] = _write_text(out / "cells.csv", long.to_csv(index=False, float_format="%.8g"))
        files["pvalues_csv"] = _write_text(out / "posthoc_pvalues.csv",
                                           comparison.result.p_values.to_csv(float_format="%.6g"))
        files["pairs_csv"] = _write_text(out / "pairs.csv", pairwise_table(comparison).to_csv(index=False,
                                                                                              float_format="%.6g"))
        files["seed_tests_csv"] = _write_text(out / "seed_tests.csv",
                                              comparison.seed_tests.to_csv(index=False, float_format="%.6g"))
        if comparison.versus is not None:
            files["versus_csv"] = _write_text(out / "versus.csv", comparison.versus.to_csv(index=False,
                                                                                          float_format="%.6g"))
        else:  # not a previous comparison's
            (out / "versus.csv").unlink(missing_ok=True)
    plots = write_bayesian_plots(comparison, out)
    if "csv" in formats:
        # Plot paths relative to the csv, so that they hold in the run's artifacts too.
        relative = {key: str(Path(path).relative_to(out)) for key, path in plots.items()}
        files["bayesian_csv"] = _write_text(out / "bayesian.csv", bayesian_table(comparison, relative).to_csv(
            index=False, float_format="%.6g"))
    files.update(write_figures(comparison, out))
    files.update(plots)
    return files


def _write_text(path: Path, text: str) -> str:
    with atomic_file(path) as handle:
        handle.write(text)
    return str(path)


def write_results_json(comparison: Comparison, out: Path, files: dict[str, str], run_id: str | None) -> dict[str, Any]:
    """Writes results.json and returns its contents. Not indented: with an indent Python's json falls back
    to its pure-Python encoder, which took 2.6 s of a 17.6 s compare of 5,000 runs (100 models: 26 MB,
    most of it the 49,500 per-corpus seed tests)."""
    path = out / "results.json"
    results = results_json(comparison, {**files, "json": str(path)}, run_id)
    _write_text(path, json.dumps(results))
    return results


def run_comparison(client, experiment: str, out: Path, options: ComparisonOptions | None = None, *,
                   filter_string: str | None = None, formats: Sequence[str] = FORMATS, log: bool = True,
                   attach_to: str | None = None) -> dict[str, Any]:
    """Compares the experiment's runs (those matching `filter_string`, but `attach_to`) as `options`
    ask, writes the outputs to `out` and (with `log`) logs them as a comparison run in the same
    experiment, or in the run `attach_to`. Returns the contents of results.json."""
    from kd.tracking.runs import TrackedRun, git_commit
    from kd.tracking.status import run_status

    check_formats(formats)
    options = options or ComparisonOptions()
    records = [r for r in fetch_runs(client, experiment, filter_string) if r.run_id != attach_to]
    comparison = compare_runs(records, options)
    if not log:
        return write_results_json(comparison, out, write_outputs(comparison, out, formats), None)
    models, corpora = comparison.table.mean.shape[1], comparison.table.mean.shape[0]
    # A name, not MLflow's random one (`overjoyed-snail-925`): models x corpora and the metric, within
    # the 22 or so characters the MLflow runs list shows (`compare-test_f1-3model...` was cut).
    name = f"compare {models}x{corpora} {options.metric}"
    run = TrackedRun.start(client, experiment, name, {"model_kind": "comparison", "git_commit": git_commit()},
                           attach_to=attach_to)
    with run_status(run):
        run.log_params({"metric": options.metric, "model_key": ",".join(options.model_keys or []) or "(kd tags)",
                        "corpus_key": options.corpus_key, "filter": filter_string or "", "posthoc": options.posthoc,
                        "alpha": options.alpha, "bayesian_rope": options.bayesian.rope,
                        "hierarchical": options.bayesian.hierarchical, "seed": options.seed,
                        "models": ",".join(comparison.table.mean.columns), "runs_used": comparison.runs_used,
                        **({"versus": ";".join(f"{a}:{b}" for a, b in options.versus)} if options.versus else {})})
        files = write_outputs(comparison, out, formats)
        results = write_results_json(comparison, out, files, run.run_id)
        r = comparison.result
        statistics = {"friedman_statistic": r.statistic, "friedman_p_value": r.p_value,
                      "critical_difference": r.critical_difference}
        run.log_metrics({**{k: v for k, v in statistics.items() if np.isfinite(v)}, "models": len(r.average_ranks),
                         "corpora": len(comparison.table.mean.index),
                         "pairs_differing": int((comparison.wilcoxon.adjusted.to_numpy() < options.alpha).sum() // 2)})
        for key, path in (*files.items(), ("json", str(out / "results.json"))):
            if not key.startswith("bayesian_"):
                run.log_artifact(path, "comparison")
        if comparison.bayesian:
            run.log_artifact(out / "bayesian", "comparison/bayesian")
    return results

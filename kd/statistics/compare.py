"""`kd compare`: the results table and statistics of an experiment, straight from its runs.

Runs are grouped into models and corpora, seeds are averaged per cell, and the models are
compared over corpora with the Friedman test, post-hoc pairwise tests, average ranks and the
Nemenyi critical difference, written as tables (md, csv, tex, json) and figures (PNG).
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kd.errors import KdError
from kd.statistics.tests import FriedmanResult, friedman
from kd.utils.atomic import atomic_file, atomic_path

FORMATS = ("md", "csv", "tex", "json")
PAGE_SIZE = 1000
# The weights that define a student, per loss: the rest keep their defaults and would only add noise.
LOSS_WEIGHTS = {"logits": ("alpha", "beta"), "intermediate": ("alpha", "beta", "gamma", "kappa"),
                "soft": ("alpha", "beta", "tau"), "kl": ("alpha", "beta", "tau"), "marginals": ("alpha", "beta")}


@dataclass
class RunRecord:
    """The parts of an MLflow run that comparison needs."""

    run_id: str
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]


@dataclass
class CellTable:
    """Per corpus (rows) and model (columns): mean, std, variance and number of seeds."""

    mean: pd.DataFrame
    std: pd.DataFrame
    var: pd.DataFrame
    count: pd.DataFrame


@dataclass
class Comparison:
    metric: str
    table: CellTable
    result: FriedmanResult
    runs_used: int
    dropped_models: list[str] = field(default_factory=list)


def fetch_runs(client, experiment: str, filter_string: str | None) -> list[RunRecord]:
    """Every finished run of the experiment matching the filter, fetched page by page."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise KdError(f"--experiment {experiment}: no such experiment in the tracking store")
    query = "attributes.status = 'FINISHED'" + (f" and {filter_string}" if filter_string else "")
    records, token = [], None
    while True:
        try:
            page = client.search_runs([found.experiment_id], filter_string=query, max_results=PAGE_SIZE,
                                      page_token=token)
        except Exception as error:
            raise KdError(f"--filter {filter_string!r}: {str(error).splitlines()[0]}") from None
        records.extend(RunRecord(r.info.run_id, dict(r.data.tags), dict(r.data.params), dict(r.data.metrics))
                       for r in page)
        token = page.token
        if not token:
            return records


def lookup(record: RunRecord, key: str) -> str | None:
    """`tags.X`, `params.X`, or a bare X looked up in tags, then params."""
    if key.startswith("tags."):
        return record.tags.get(key[5:])
    if key.startswith("params."):
        return record.params.get(key[7:])
    return record.tags.get(key, record.params.get(key))


def default_model_name(record: RunRecord) -> str:
    """A name from the tags kd writes: kind, output, and for students the loss, its weights and
    the kind of teacher ensemble."""
    tags, params = record.tags, record.params
    parts = [tags.get("model_kind", "run"), tags.get("output", "")]
    loss = tags.get("loss")
    if tags.get("model_kind") == "tuned":
        # Tuned weights differ per corpus by design: the search space names the model.
        return "/".join(p for p in (*parts, loss, tags.get("ensemble"), tags.get("search_space")) if p)
    if loss:
        weights = " ".join(f"{name}={_number(params.get(name))}" for name in LOSS_WEIGHTS.get(loss, ())
                           if params.get(name) is not None)
        parts.append(f"{loss}({weights})" if weights else loss)
    if tags.get("ensemble") and tags.get("model_kind") == "student":
        parts.append(tags["ensemble"])
    return "/".join(p for p in parts if p)


def _number(value: str | None) -> str:
    try:
        return f"{float(value):g}"
    except (TypeError, ValueError):
        return str(value)


def collect_cells(records: Sequence[RunRecord], metric: str, model_keys: Sequence[str] | None,
                  corpus_key: str) -> tuple[dict[tuple[str, str], list[float]], int]:
    """(model, corpus) -> the metric of each run (seed) in that cell. A run over several corpora
    (a teacher) gives one value per corpus from its `<metric>/<corpus>` metrics."""
    cells: dict[tuple[str, str], list[float]] = {}
    used = 0
    for record in records:
        if record.tags.get("model_kind") == "comparison":
            continue
        if model_keys:
            values = [lookup(record, key) for key in model_keys]
            if any(v is None for v in values):
                continue
            model = values[0] if len(values) == 1 else ", ".join(f"{k.split('.')[-1]}={v}"
                                                                  for k, v in zip(model_keys, values))
        else:
            model = default_model_name(record)
        corpus_value = lookup(record, corpus_key)
        if corpus_value is None:
            continue
        corpora = [c for c in corpus_value.split(",") if c]
        if len(corpora) > 1:
            per_corpus = {c: record.metrics.get(f"{metric}/{c}") for c in corpora}
        else:
            per_corpus = {corpus_value: record.metrics.get(metric)}
        per_corpus = {c: v for c, v in per_corpus.items() if v is not None and math.isfinite(v)}
        if not per_corpus:
            continue
        used += 1
        for corpus, value in per_corpus.items():
            cells.setdefault((model, corpus), []).append(float(value))
    return cells, used


def cell_table(cells: Mapping[tuple[str, str], list[float]]) -> CellTable:
    models = sorted({m for m, _ in cells})
    corpora = sorted({c for _, c in cells}, key=str.lower)
    frames = {name: pd.DataFrame(np.nan, index=corpora, columns=models) for name in ("mean", "std", "var", "count")}
    for (model, corpus), values in cells.items():
        array = np.asarray(values, dtype=np.float64)
        variance = float(array.var(ddof=1)) if len(array) > 1 else 0.0
        frames["mean"].loc[corpus, model] = float(array.mean())
        frames["var"].loc[corpus, model] = variance
        frames["std"].loc[corpus, model] = math.sqrt(variance)
        frames["count"].loc[corpus, model] = len(array)
    return CellTable(**frames)


def compare_runs(records: Sequence[RunRecord], metric: str = "test_f1", model_keys: Sequence[str] | None = None,
                 corpus_key: str = "tags.task", posthoc: str = "conover", alpha: float = 0.05,
                 drop_incomplete: bool = False) -> Comparison:
    if not records:
        raise KdError("no finished runs to compare (check --experiment and --filter)")
    cells, used = collect_cells(records, metric, model_keys, corpus_key)
    if not cells:
        raise KdError(f"none of the {len(records)} runs has the metric {metric!r} and the keys "
                      f"{', '.join(model_keys or ['(kd tags)'])} / {corpus_key}")
    table = cell_table(cells)
    missing = table.mean.isna()
    dropped: list[str] = []
    if missing.any().any():
        incomplete = {model: list(table.mean.index[missing[model]]) for model in table.mean.columns
                      if missing[model].any()}
        if not drop_incomplete:
            detail = "; ".join(f"{model} lacks {', '.join(corpora)}" for model, corpora in incomplete.items())
            raise KdError(f"models missing on some corpora: {detail} (use --drop-incomplete to leave them out)")
        dropped = sorted(incomplete)
        keep = [m for m in table.mean.columns if m not in incomplete]
        table = CellTable(*(frame[keep] for frame in (table.mean, table.std, table.var, table.count)))
    result = friedman(table.mean, posthoc=posthoc, alpha=alpha)
    return Comparison(metric=metric, table=table, result=result, runs_used=used, dropped_models=dropped)


# --- output -----------------------------------------------------------------------------------


def display_scale(comparison: Comparison) -> float:
    """Scores in [0, 1] are shown as percentages, as in the literature."""
    values = comparison.table.mean.to_numpy()
    return 100.0 if np.nanmax(np.abs(values)) <= 1.0 else 1.0


def summary_rows(comparison: Comparison) -> pd.DataFrame:
    """The table as shown: corpora, then the average and the average-variance rows."""
    scale = display_scale(comparison)
    shown = comparison.table.mean * scale
    shown.loc["Average"] = shown.mean(axis=0)
    shown.loc["Average variance"] = (comparison.table.var * scale * scale).mean(axis=0)
    return shown


def best_columns(row: pd.Series) -> set[str]:
    return set(row.index[np.isclose(row.to_numpy(), row.max())])


def render_markdown(comparison: Comparison) -> str:
    rows = summary_rows(comparison)
    models = list(rows.columns)
    scale_note = " (x100)" if display_scale(comparison) == 100 else ""
    lines = [f"| corpus | {' | '.join(models)} |", "|---|" + "---:|" * len(models)]
    for corpus, row in rows.iterrows():
        best = best_columns(row) if corpus != "Average variance" else set()
        cells = [f"**{row[m]:.2f}**" if m in best else f"{row[m]:.2f}" for m in models]
        lines.append(f"| {corpus} | {' | '.join(cells)} |")
    ranks = comparison.result.average_ranks
    lines.append(f"| Average rank | {' | '.join(f'{ranks[m]:.2f}' for m in models)} |")
    r = comparison.result
    lines += ["", f"{comparison.metric}{scale_note}, mean over seeds; best per row in bold.",
              f"Friedman chi2 = {r.statistic:.4f}, p = {r.p_value:.4g}; Nemenyi critical difference = "
              f"{r.critical_difference:.3f} ranks."]
    if r.p_value >= r.alpha:
        lines.append(f"The Friedman test does not reject equal performance at alpha = {r.alpha:g}: "
                     "post-hoc differences are not evidence on their own.")
    return "\n".join(lines) + "\n"


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
        best = best_columns(row) if corpus != "Average variance" else set()
        cells = [rf"\textbf{{{row[m]:.2f}}}" if m in best else f"{row[m]:.2f}" for m in models]
        lines.append(_tex_escape(str(corpus)) + " & " + " & ".join(cells) + r" \\")
    lines += [r"\hline", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def results_json(comparison: Comparison, files: Mapping[str, str], run_id: str | None) -> dict[str, Any]:
    r, t = comparison.result, comparison.table
    return {
        "metric": comparison.metric, "friedman_statistic": r.statistic, "friedman_p_value": r.p_value,
        "critical_difference": r.critical_difference, "average_ranks": {m: float(v) for m, v in r.average_ranks.items()},
        "posthoc_p_values": {m: {n: float(v) for n, v in row.items()} for m, row in r.p_values.iterrows()},
        "cells": {corpus: {model: {"mean": float(t.mean.loc[corpus, model]), "std": float(t.std.loc[corpus, model]),
                                   "var": float(t.var.loc[corpus, model]), "n": int(t.count.loc[corpus, model])}
                           for model in t.mean.columns} for corpus in t.mean.index},
        "models": list(t.mean.columns), "corpora": list(t.mean.index), "runs_used": comparison.runs_used,
        "dropped_models": comparison.dropped_models, "files": dict(files), "comparison_run_id": run_id,
    }


def write_figures(comparison: Comparison, out: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scikit_posthocs as sp

    r = comparison.result
    written = {}
    # Sizes grow with the number of models up to a cap: beyond it labels shrink rather than the
    # image growing to tens of megapixels (which also made saving take seconds).
    figure, axes = plt.subplots(figsize=(8, min(0.5 + 0.35 * len(r.average_ranks), 24)))
    sp.critical_difference_diagram(r.average_ranks, r.p_values, ax=axes)
    axes.set_title(f"Average ranks ({comparison.metric}); bars join models not significantly different")
    written["cd_diagram"] = _save(figure, out / "cd_diagram.png")
    size = min(2 + 0.5 * len(r.average_ranks), 14)
    figure, axes = plt.subplots(figsize=(size + 1, size))
    sp.sign_plot(r.p_values, ax=axes)
    axes.set_title("Post-hoc p-values")
    axes.tick_params(axis="x", labelrotation=45)
    written["significance"] = _save(figure, out / "significance.png")
    return written


def _save(figure, path: Path) -> str:
    import matplotlib.pyplot as plt

    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    return str(path)


def write_outputs(comparison: Comparison, out: Path, formats: Sequence[str]) -> dict[str, str]:
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise KdError(f"--format {','.join(formats)}: use a comma-separated subset of {', '.join(FORMATS)}")
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
        long = pd.DataFrame([{"corpus": c, "model": m, "mean": t.mean.loc[c, m], "std": t.std.loc[c, m],
                              "var": t.var.loc[c, m], "n": int(t.count.loc[c, m])}
                             for c in t.mean.index for m in t.mean.columns])
        files["cells_csv"] = _write_text(out / "cells.csv", long.to_csv(index=False, float_format="%.8g"))
        files["pvalues_csv"] = _write_text(out / "posthoc_pvalues.csv",
                                           comparison.result.p_values.to_csv(float_format="%.6g"))
    files.update(write_figures(comparison, out))
    return files


def _write_text(path: Path, text: str) -> str:
    with atomic_file(path) as handle:
        handle.write(text)
    return str(path)


def write_results_json(comparison: Comparison, out: Path, files: dict[str, str], run_id: str | None) -> str:
    path = out / "results.json"
    files = {**files, "json": str(path)}
    return _write_text(path, json.dumps(results_json(comparison, files, run_id), indent=2))


def run_comparison(client, experiment: str, out: Path, *, metric: str = "test_f1",
                   model_keys: Sequence[str] | None = None, corpus_key: str = "tags.task",
                   filter_string: str | None = None, posthoc: str = "conover", alpha: float = 0.05,
                   formats: Sequence[str] = FORMATS, drop_incomplete: bool = False, log: bool = True,
                   attach_to: str | None = None) -> dict[str, Any]:
    """Compares the experiment's runs, writes the outputs to `out` and (with `log`) logs them as a
    comparison run in the same experiment. Returns the contents of results.json."""
    from kd.tracking.runs import TrackedRun, git_commit
    from kd.training.jobs import run_status

    records = [r for r in fetch_runs(client, experiment, filter_string) if r.run_id != attach_to]
    comparison = compare_runs(records, metric, model_keys, corpus_key, posthoc, alpha, drop_incomplete)
    if not log:
        files = write_outputs(comparison, out, formats)
        write_results_json(comparison, out, files, None)
        return results_json(comparison, {**files, "json": str(out / "results.json")}, None)
    run = TrackedRun.start(client, experiment, None, {"model_kind": "comparison", "git_commit": git_commit()},
                           attach_to=attach_to)
    with run_status(run):
        run.log_params({"metric": metric, "model_key": ",".join(model_keys or []) or "(kd tags)",
                        "corpus_key": corpus_key, "filter": filter_string or "", "posthoc": posthoc, "alpha": alpha,
                        "models": ",".join(comparison.table.mean.columns), "runs_used": comparison.runs_used})
        files = write_outputs(comparison, out, formats)
        write_results_json(comparison, out, files, run.run_id)
        r = comparison.result
        run.log_metrics({"friedman_statistic": r.statistic, "friedman_p_value": r.p_value,
                         "critical_difference": r.critical_difference, "models": len(r.average_ranks),
                         "corpora": len(comparison.table.mean.index)})
        for path in (*files.values(), str(out / "results.json")):
            run.log_artifact(path, "comparison")
    return results_json(comparison, {**files, "json": str(out / "results.json")}, run.run_id)

"""`kd compare`: the results table and statistics of an experiment, straight from its runs.

Runs are grouped into models and corpora, seeds are averaged per cell, models identical on every
cell are merged, and the models are compared over corpora with the Friedman test (3+ models), post-hoc pairwise tests, average ranks and the
Nemenyi critical difference, plus per pair Wilcoxon-Holm tests, bootstrap intervals of the mean
difference, Bayesian tests with a ROPE and per-corpus tests over seeds. `kd.statistics.comparison_report`
writes them out.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from kd.errors import KdError
from kd.tracking.metrics import LATE_GAIN, corpus_metric_value
from kd.statistics.bayesian import BayesianResult, bayesian_pairs, hierarchical, signed_rank
from kd.statistics.comparison_options import BayesianOptions, ComparisonOptions
from kd.statistics.pairwise import WilcoxonHolm, bootstrap_differences, model_pairs, wilcoxon_holm
from kd.statistics.seeds import seed_tests
from kd.statistics.tests import FriedmanResult, average_ranks, friedman
from kd.statistics.versus import check_versus, versus_table
from kd.statistics.validity import (INTERVAL_CORPORA, all_equal, degenerate_notes, identical_groups, merged_label,
                                    quiet_numerics, too_few_notes, unconverged_counts, unconverged_note)

PAGE_SIZE = 1000


@dataclass
class RunRecord:
    """The parts of an MLflow run that comparison needs."""

    run_id: str
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]
    start_time: int = 0  # ms since the epoch: of two runs of one seed in one cell, the newer counts


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
    scale: float = 1.0  # to F1 points: 100 for scores logged as fractions
    seed: int = 0  # of the bootstrap and the Bayesian tests
    wilcoxon: WilcoxonHolm | None = None
    effects: pd.DataFrame | None = None  # per pair: mean difference in points and bootstrap interval
    seed_tests: pd.DataFrame | None = None  # per corpus and pair: differs beyond seed noise?
    bayesian: list[BayesianResult] = field(default_factory=list)
    bayesian_options: BayesianOptions = field(default_factory=BayesianOptions)
    warnings: list[str] = field(default_factory=list)  # duplicate seeds, unequal seed counts
    legend: dict[str, str] = field(default_factory=dict)  # model label -> its full definition
    notes: list[str] = field(default_factory=list)  # what the numbers cannot say (kd.statistics.validity)
    unconverged: pd.DataFrame | None = None  # corpus x model: seeds whose devel F1 still rose at the end
    degenerate: bool = False  # every cell the same score: nothing ranked or tested
    versus: pd.DataFrame | None = None  # per (model, baseline, corpus): difference over seeds (kd.statistics.versus)


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
        records.extend(RunRecord(r.info.run_id, dict(r.data.tags), dict(r.data.params), dict(r.data.metrics),
                                 r.info.start_time or 0) for r in page)
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
        weights = " ".join(f"{name}={_number(params.get(name))}" for name in loss_fields(loss)
                           if params.get(name) is not None)
        parts.append(f"{loss}({weights})" if weights else loss)
    if tags.get("ensemble") and tags.get("model_kind") == "student":
        parts.append(tags["ensemble"])
    return "/".join(p for p in parts if p)


def loss_fields(loss: str) -> tuple[str, ...]:
    """The weights that define a student of this loss, as the loss registers them (the rest keep
    their defaults and would only add noise); none for a loss this kd does not know."""
    from kd.losses.distill import LOSSES  # here: the losses import torch, which reading runs does not need

    return LOSSES[loss].defining_fields() if loss in LOSSES else ()


def _number(value: str | None) -> str:
    try:
        return f"{float(value):g}"
    except (TypeError, ValueError):
        return str(value)


Cells = dict[tuple[str, str], list[tuple[str | None, float]]]
# The group key of a run tagged with its model's identity (kd.training.identity); runs logged before
# those tags are grouped by `default_model_name`.
ID_KEY = "model_id:"


def model_of(record: RunRecord, model_keys: Sequence[str] | None) -> str | None:
    """The model a run belongs to: its `model_id` tag (else kd's default name), or the values of
    `model_keys` (None when the run lacks one of them)."""
    if not model_keys:
        model_id = record.tags.get("model_id")
        return ID_KEY + model_id if model_id else default_model_name(record)
    values = [lookup(record, key) for key in model_keys]
    if any(v is None for v in values):
        return None
    return values[0] if len(values) == 1 else ", ".join(f"{k.split('.')[-1]}={v}" for k, v in zip(model_keys, values))


def model_labels(records: dict[str, RunRecord]) -> tuple[dict[str, str], dict[str, str]]:
    """({group key: label}, {label: full definition}) for the models of a comparison, from one run
    of each (`records`). A model is labelled by its short `model_name`; models sharing a name are
    told apart by the start of their id. A model without an id is labelled by its key."""
    names = {key: record.tags.get("model_name") or key[len(ID_KEY):] if key.startswith(ID_KEY) else key
             for key, record in records.items()}
    clashing = {name for name in names.values() if list(names.values()).count(name) > 1}
    labels = {key: f"{name} [{key[len(ID_KEY):][:6]}]" if name in clashing and key.startswith(ID_KEY) else name
              for key, name in names.items()}
    legend = {labels[key]: definition_text(record) if key.startswith(ID_KEY) else key
              for key, record in records.items()}
    return labels, legend


def definition_text(record: RunRecord) -> str:
    """A model's definition, as its run's `model_definition` tag gives it, in `key=value` words."""
    import json

    try:
        definition = json.loads(record.tags.get("model_definition", ""))
    except ValueError:
        return f"model_id {record.tags.get('model_id')}"
    return ", ".join(f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in definition.items())


def collect_cells(records: Sequence[RunRecord], metric: str, model_keys: Sequence[str] | None,
                  corpus_key: str, warnings: list[str] | None = None,
                  legend: dict[str, str] | None = None) -> tuple[Cells, int]:
    """(model, corpus) -> (seed label, metric) of each run in that cell; the label is the run's
    `seed` tag or param, None without one. A run over several corpora (a teacher) gives one value
    per corpus from its `<metric>/<corpus>` metrics. One sample per (model, corpus, seed): of runs
    repeating a seed the newest counts, and `warnings` says so (a repeated run is not a new seed).
    Models are labelled as `model_labels` says, with `legend` filled (kd's default grouping)."""
    chosen: dict[tuple[str, str, str], tuple[int, str, float]] = {}
    repeated: dict[str, int] = {}
    cells: Cells = {}
    examples: dict[str, RunRecord] = {}
    used = 0
    for record in records:
        model = model_of(record, model_keys) if record.tags.get("model_kind") != "comparison" else None
        per_corpus = corpus_values(record, metric, corpus_key) if model is not None else {}
        if not per_corpus:
            continue
        used += 1
        examples.setdefault(model, record)
        seed = lookup(record, "seed")
        for corpus, value in per_corpus.items():
            if seed is None:
                cells.setdefault((model, corpus), []).append((None, float(value)))
                continue
            key = (model, corpus, seed)
            if key in chosen:
                repeated[model] = repeated.get(model, 0) + 1
            if key not in chosen or record.start_time > chosen[key][0]:
                chosen[key] = (record.start_time, record.run_id, float(value))
    for (model, corpus, seed), (_, _, value) in chosen.items():
        cells.setdefault((model, corpus), []).append((seed, value))
    labels, described = model_labels(examples) if not model_keys else ({m: m for m in examples}, {})
    if legend is not None:
        legend.update(described)
    if warnings is not None:
        warnings += [f"{labels[model]}: {n} extra run(s) of a seed already present on a corpus; the newest of "
                     f"each (corpus, seed) counts, the others are not new samples" for model, n in repeated.items()]
    return {(labels[model], corpus): runs for (model, corpus), runs in cells.items()}, used


def corpus_values(record: RunRecord, metric: str, corpus_key: str) -> dict[str, float]:
    """{corpus: the run's finite `metric` on it}: `<metric>/<corpus>` for a run over several corpora."""
    corpus_value = lookup(record, corpus_key)
    if corpus_value is None:
        return {}
    corpora = [c for c in corpus_value.split(",") if c]
    if len(corpora) > 1:
        per_corpus = {c: corpus_metric_value(record.metrics, metric, c) for c in corpora}
    else:
        per_corpus = {corpus_value: record.metrics.get(metric)}
    return {c: v for c, v in per_corpus.items() if v is not None and math.isfinite(v)}


def seed_count_warning(count: pd.DataFrame) -> list[str]:
    """Models averaged over different numbers of seeds are not equally reliable: say so."""
    counts = count.stack().astype(int)
    if counts.empty or counts.min() == counts.max():
        return []
    usual = int(counts.mode().iloc[0])
    odd = {m: sorted({int(v) for v in count[m].dropna()}) for m in count.columns
           if set(count[m].dropna().astype(int)) != {usual}}
    detail = "; ".join(f"{m}: {c[0]}" + (f"-{c[-1]}" if len(c) > 1 else "") for m, c in odd.items())
    return [f"cells are means of different numbers of seeds: most have {usual}, but {detail}"]


def cell_table(cells: Cells) -> CellTable:
    models = sorted({m for m, _ in cells})
    corpora = sorted({c for _, c in cells}, key=str.lower)
    frames = {name: pd.DataFrame(np.nan, index=corpora, columns=models) for name in ("mean", "std", "var", "count")}
    for (model, corpus), runs in cells.items():
        array = np.asarray([value for _, value in runs], dtype=np.float64)
        variance = float(array.var(ddof=1)) if len(array) > 1 else math.nan  # undefined for one seed
        frames["mean"].loc[corpus, model] = float(array.mean())
        frames["var"].loc[corpus, model] = variance
        frames["std"].loc[corpus, model] = math.sqrt(variance)
        frames["count"].loc[corpus, model] = len(array)
    return CellTable(**frames)


def compare_runs(records: Sequence[RunRecord], options: ComparisonOptions | None = None) -> Comparison:
    """The cell table, its validity notes (`kd.statistics.validity`), the Friedman test and post-hoc
    p-values where they apply, then the pairwise statistics (`add_pairwise_statistics`) and the
    per-corpus differences of the `versus` pairs (kd.statistics.versus)."""
    if not records:
        raise KdError("no finished runs to compare (check --experiment and --filter)")
    o = options or ComparisonOptions()
    warnings: list[str] = []
    legend: dict[str, str] = {}
    cells, used = collect_cells(records, o.metric, o.model_keys, o.corpus_key, warnings, legend)
    if not cells:
        raise KdError(f"none of the {len(records)} runs has the metric {o.metric!r} and the keys "
                      f"{', '.join(o.model_keys or ['(kd tags)'])} / {o.corpus_key}")
    table, dropped = complete_table(cell_table(cells), o.drop_incomplete)
    warnings = [w for w in warnings if not any(w.startswith(f"{model}: ") for model in dropped)]
    scale = display_scale(table.mean)
    degenerate = all_equal(table.mean)
    check_versus(o.versus, list(table.mean.columns), dropped)  # before the merge: the names it uses
    table, cells, renamed, merge_notes = (table, cells, {}, []) if degenerate else merge_identical(table, cells)
    notes = degenerate_notes(table.mean, scale)  # after merging: a tie of one model with itself is no note
    models, corpora = list(table.mean.columns), list(table.mean.index)
    gains, _ = collect_cells(records, LATE_GAIN, o.model_keys, o.corpus_key)
    gains = {(renamed.get(m, m), c): runs for (m, c), runs in gains.items()}
    unconverged = unconverged_counts(gains, models, corpora)
    # Every score equal: the degenerate note says no test means anything; what each test lacks is noise.
    notes += merge_notes + ([] if degenerate else too_few_notes(len(models), len(corpora), o.alpha))
    notes += unconverged_note(unconverged)
    with quiet_numerics():
        result = rank_models(table.mean, o.posthoc, o.alpha, test=not degenerate)
        comparison = Comparison(metric=o.metric, table=table, result=result, runs_used=used, dropped_models=dropped,
                                scale=scale, seed=o.seed, bayesian_options=o.bayesian,
                                warnings=warnings + seed_count_warning(table.count),
                                legend={renamed.get(m, m): d for m, d in legend.items() if renamed.get(m, m) in models},
                                notes=notes, unconverged=unconverged, degenerate=degenerate)
        add_pairwise_statistics(comparison, cells)
    if o.versus:
        by_name = {(m, c): cells[(renamed.get(m, m), c)] for pair in o.versus for m in pair for c in corpora}
        comparison.versus = versus_table(by_name, o.versus, corpora, scale=scale, seed=o.seed)
    return comparison


def complete_table(table: CellTable, drop_incomplete: bool) -> tuple[CellTable, list[str]]:
    """The table without the models missing on some corpus (with `drop_incomplete`; else an error
    naming them) and the names of those dropped."""
    missing = table.mean.isna()
    if not missing.any().any():
        return table, []
    incomplete = {model: list(table.mean.index[missing[model]]) for model in table.mean.columns if missing[model].any()}
    if not drop_incomplete:
        detail = "; ".join(f"{model} lacks {', '.join(corpora)}" for model, corpora in incomplete.items())
        raise KdError(f"models missing on some corpora: {detail} (use --drop-incomplete to leave them out)")
    keep = [m for m in table.mean.columns if m not in incomplete]
    if not keep:
        raise KdError("no model has a score on every corpus: nothing is left to compare after --drop-incomplete")
    return CellTable(*(frame[keep] for frame in (table.mean, table.std, table.var, table.count))), sorted(incomplete)


def merge_identical(table: CellTable, cells: Cells) -> tuple[CellTable, Cells, dict[str, str], list[str]]:
    """Models with the same score on every corpus and seed are one model: kept once, under the
    label `A = B`, so that they are not ranked as two. Returns the table, the cells, {old label:
    new label} and a note per group."""
    groups = identical_groups(cells, list(table.mean.columns), list(table.mean.index))
    if not groups:
        return table, cells, {}, []
    renamed = {model: merged_label(group) for group in groups for model in group}
    dropped = {model for group in groups for model in group[1:]}
    keep = [m for m in table.mean.columns if m not in dropped]
    table = CellTable(*(frame[keep].rename(columns=renamed) for frame in (table.mean, table.std, table.var, table.count)))
    cells = {(renamed.get(m, m), c): runs for (m, c), runs in cells.items() if m not in dropped}
    notes = [f"{', '.join(group[1:])} scored exactly as {group[0]} on every corpus and seed: one model, shown and "
             f"ranked once as \"{merged_label(group)}\"" for group in groups]
    return table, cells, renamed, notes


def rank_models(means: pd.DataFrame, posthoc: str, alpha: float, *, test: bool) -> FriedmanResult:
    """The Friedman test and post-hoc p-values with 3+ models on 2+ corpora (and `test`); else the
    average ranks and Holm-adjusted Wilcoxon p-values alone (NaN with one corpus), no Friedman."""
    corpora, models = means.shape
    if test and models >= 3 and corpora >= 2:
        return friedman(means, posthoc=posthoc, alpha=alpha)
    if not 0 < alpha < 1:
        raise KdError(f"--alpha {alpha}: must be between 0 and 1")
    return FriedmanResult(statistic=math.nan, p_value=math.nan, average_ranks=average_ranks(means),
                          p_values=wilcoxon_holm(means).adjusted, critical_difference=math.nan, alpha=alpha,
                          posthoc="wilcoxon-holm")


def display_scale(means: pd.DataFrame) -> float:
    """Scores in [0, 1] are fractions: times 100 they are the F1 points of the literature."""
    return 100.0 if np.nanmax(np.abs(means.to_numpy())) <= 1.0 else 1.0


def add_pairwise_statistics(comparison: Comparison, cells: Cells) -> None:
    """Wilcoxon-Holm over corpora, bootstrap intervals of mean differences, per-corpus tests over
    seeds and the Bayesian tests, all on F1 points (scores times `comparison.scale`)."""
    table, options = comparison.table, comparison.bayesian_options
    if options.rope < 0:
        raise KdError(f"--bayesian {options.rope:g}: must be 0 (off) or a positive ROPE in F1 points")
    models, corpora = list(table.mean.columns), list(table.mean.index)
    points = table.mean * comparison.scale
    pairs = model_pairs(models)
    comparison.wilcoxon = wilcoxon_holm(table.mean)
    comparison.effects = bootstrap_differences(points, pairs, seed=comparison.seed)
    if len(corpora) < INTERVAL_CORPORA:
        comparison.effects[["low", "high"]] = math.nan
    comparison.seed_tests = seed_tests(cells, models, corpora, pairs, comparison.scale, comparison.result.alpha)
    if options.rope == 0 or comparison.degenerate or len(corpora) < 2:
        return
    for a, b in bayesian_pairs(models, dict(comparison.result.average_ranks), options.all_pairs_up_to):
        comparison.bayesian.append(signed_rank(a, b, points[a].to_numpy(), points[b].to_numpy(), options.rope,
                                               seed=comparison.seed, samples=options.samples))
        if options.hierarchical:
            x, y = seed_arrays(cells, a, b, corpora, comparison.scale)
            comparison.bayesian.append(hierarchical(a, b, x, y, options.rope, seed=comparison.seed))


def seed_arrays(cells: Cells, a: str, b: str, corpora: Sequence[str], scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Corpora x seeds arrays of two models for the hierarchical test, seeds in label order (so
    runs with the same seed face each other); every cell needs the same number of seeds, 2+."""
    rows = {m: [[v * scale for _, v in sorted(cells[(m, c)], key=lambda r: str(r[0]))] for c in corpora]
            for m in (a, b)}
    counts = {len(row) for m in (a, b) for row in rows[m]}
    if len(counts) != 1 or counts.pop() < 2:
        raise KdError(f"--hierarchical: {a} and {b} need the same number of seeds (2 or more) on every corpus")
    return np.array(rows[a]), np.array(rows[b])

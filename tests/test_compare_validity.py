"""Reports that state their own validity (issue 26): two models and one corpus get the tests that
apply, degenerate scores are said (never bolded or ranked), identical models are merged, unconverged
cells are marked, and the Bayesian figures show the numbers of the tables."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from scipy import stats

from kd.cli.main import cli
from kd.statistics.compare import RunRecord, compare_runs
from kd.statistics.comparison_options import ComparisonOptions
from kd.statistics.comparison_report import render_markdown, write_outputs
from kd.tracking.metrics import LATE_GAIN, late_gains
from kd.tracking.runs import TrackedRun
from kd.tracking.backend import open_client
from tests.test_compare import published_table


def seeded_records(table: pd.DataFrame, offsets=(-0.3, 0.0, 0.3), extra: dict | None = None) -> list[RunRecord]:
    """One run per corpus, model and seed (scores in points, seed offsets cancelling out)."""
    return [RunRecord(f"{c}-{m}-{s}", {"task": c, "model": m, "seed": str(s)}, {},
                      {"test_f1": v + offset, **(extra or {}).get((c, m), {})})
            for c, row in table.iterrows() for m, v in row.items() for s, offset in enumerate(offsets)]


def strict(function, *args, **kwargs):
    """`function` with every warning an error: scipy's RuntimeWarnings must not reach the user."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return function(*args, **kwargs)


def test_two_models_get_the_pairwise_tests_and_no_friedman(tmp_path):
    table = published_table()[["STM", "MTM"]]
    comparison = strict(compare_runs, seeded_records(table), ComparisonOptions(model_keys=("model",)))
    assert np.isnan(comparison.result.statistic)
    assert any(note.startswith("Friedman test left out: it compares 3 or more models, here 2")
               for note in comparison.notes)
    expected = stats.wilcoxon(table["STM"] - table["MTM"])
    assert comparison.wilcoxon.p_values.loc["STM", "MTM"] == pytest.approx(expected.pvalue)
    assert comparison.wilcoxon.adjusted.loc["STM", "MTM"] == pytest.approx(expected.pvalue)  # one pair: Holm = p
    effect = comparison.effects.iloc[0]
    assert effect.mean_difference == pytest.approx((table[effect.a] - table[effect.b]).mean())
    assert effect.low < effect.mean_difference < effect.high
    assert len(comparison.bayesian) == 1
    files = strict(write_outputs, comparison, tmp_path, ["md", "csv"])
    assert "cd_diagram" not in files and not (tmp_path / "cd_diagram.png").exists()
    markdown = (tmp_path / "table.md").read_text()
    assert "Friedman chi2" not in markdown and "- Friedman test left out" in markdown


def test_one_corpus_is_compared_by_its_seeds():
    table = published_table().iloc[:1][["STM", "MTM", "SM_alpha0"]]
    offsets = (-0.4, -0.1, 0.0, 0.2, 0.3)
    records = seeded_records(table, offsets)
    # A clear seed-matched difference for the MTM: per-seed noise that the STM does not share.
    for record in records:
        if record.tags["model"] == "MTM":
            record.metrics["test_f1"] += 0.05 * int(record.tags["seed"])
    comparison = strict(compare_runs, records, ComparisonOptions(model_keys=("model",)))
    assert np.isnan(comparison.result.statistic) and not comparison.bayesian
    assert np.isnan(comparison.wilcoxon.p_values.loc["STM", "MTM"])
    assert any("1 corpus" in note for note in comparison.notes)
    stm = [r.metrics["test_f1"] for r in records if r.tags["model"] == "STM"]
    mtm = [r.metrics["test_f1"] for r in records if r.tags["model"] == "MTM"]
    row = comparison.seed_tests.query("a == 'MTM' and b == 'STM' or a == 'STM' and b == 'MTM'").iloc[0]
    assert row.p_value == pytest.approx(stats.ttest_rel(stm, mtm).pvalue)
    assert "n/a" in render_markdown(comparison)  # no interval over one corpus


def test_all_zero_runs_are_reported_as_degenerate_without_a_best_or_a_scipy_warning(tracking, tmp_path):
    """The tiny plan of issue 26: every model at test F1 0 on 2 corpora, 2 seeds."""
    client = open_client(tracking)
    for corpus in ("NCBI-disease", "BioNLP13PC"):
        for model in ("STM", "MTM", "SM_alpha0", "SM_alpha0.5", "SM_alpha1"):
            for seed in (1, 2):
                run = TrackedRun.start(client, "zeros", None, {"task": corpus, "model": model, "seed": seed})
                run.log_metrics({"test_f1": 0.0})
                run.finish()
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["compare", "--experiment", "zeros", "--model-key", "model", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "note: every model scores 0.00 on every corpus" in result.stderr
    assert "Warning" not in result.stderr and "invalid value" not in result.stderr
    markdown = (out / "table.md").read_text()
    assert "**" not in markdown.split("\n\n")[0]  # nothing bolded as best in the table
    assert "Friedman chi2" not in markdown and "nan" not in markdown.split("## Pairs")[0]
    assert "- every model scores 0.00 on every corpus (the models learnt nothing" in markdown
    assert "Bayesian tests: left out" in markdown
    results = json.loads((out / "results.json").read_text())
    assert results["degenerate"] and results["friedman_p_value"] is None
    assert len(results["models"]) == 5  # all equal: said, not merged into one
    assert not (out / "cd_diagram.png").exists()
    assert client.get_run(results["comparison_run_id"]).info.run_name == "compare 5x2 test_f1"


def test_models_identical_on_every_cell_are_ranked_once():
    table = published_table()
    copy = table.assign(STM_copy=table["STM"])
    comparison = strict(compare_runs, seeded_records(copy), ComparisonOptions(model_keys=("model",)))
    columns = list(comparison.table.mean.columns)
    assert "STM = STM_copy" in columns and "STM" not in columns and len(columns) == 5
    expected = stats.friedmanchisquare(*(table[m].to_numpy() for m in table.columns))
    assert comparison.result.statistic == pytest.approx(expected.statistic)
    assert any(note.startswith('STM_copy scored exactly as STM on every corpus and seed') for note in comparison.notes)


@pytest.mark.parametrize("corpora, interval, wilcoxon_note", [(2, False, True), (4, True, True), (6, True, False)])
def test_few_corpora_are_said(corpora, interval, wilcoxon_note):
    table = published_table().iloc[:corpora, :3]
    comparison = strict(compare_runs, seeded_records(table), ComparisonOptions(model_keys=("model",)))
    assert np.isfinite(comparison.effects["low"]).all() == interval
    assert any("no bootstrap interval" in n for n in comparison.notes) == (not interval)
    assert any(f"cannot reach p < 0.05 (its smallest p is {2.0 ** (1 - corpora):.3g})" in n
               for n in comparison.notes) == wilcoxon_note
    assert any("unreliable below 5 corpora" in n for n in comparison.notes) == (corpora < 5)


def test_headline_by_hand():
    from kd.tracking.metrics import headline

    final = {"test_f1": 0.8431, "devel_f1": 0.241, "best_epoch": 10.0, "epochs_trained": 10.0, LATE_GAIN: 0.192}
    assert headline(final) == ("test F1 84.31, devel F1 24.10, best epoch 10 of 10, "
                               "not converged: devel F1 rose +19.20 over the last 2 epochs")
    assert headline({"test_f1": 0.5, LATE_GAIN: 0.004}) == "test F1 50.00"


def test_late_gains_by_hand():
    history = [{"devel_f1": 0.0, "A/devel_f1": 0.5}, {"devel_f1": 0.0, "A/devel_f1": 0.6},
               {"devel_f1": 0.049, "A/devel_f1": 0.55}, {"devel_f1": 0.241, "A/devel_f1": 0.58}]
    assert late_gains(history) == pytest.approx({LATE_GAIN: 0.241, f"A/{LATE_GAIN}": 0.58 - 0.6})
    assert late_gains(history[:2]) == pytest.approx({LATE_GAIN: 0.0, f"A/{LATE_GAIN}": 0.6 - 0.5})
    assert late_gains(history[:1]) == {}


def test_a_model_still_learning_is_marked_not_converged():
    table = published_table().iloc[:6, :3]
    rising = {(table.index[0], "MTM"): {LATE_GAIN: 0.19}, (table.index[1], "MTM"): {LATE_GAIN: 0.004}}
    comparison = compare_runs(seeded_records(table, extra=rising), ComparisonOptions(model_keys=("model",)))
    assert comparison.unconverged.loc[table.index[0], "MTM"] == 3  # every seed of that cell
    assert comparison.unconverged.to_numpy().sum() == 3  # a 0.4-point rise is noise, not learning
    markdown = render_markdown(comparison)
    row = next(line for line in markdown.splitlines() if line.startswith(f"| {table.index[0]} |"))
    assert row.split(" | ")[list(comparison.table.mean.columns).index("MTM") + 1].endswith(" †")
    assert f"MTM on {table.index[0]} (3)" in markdown


def test_bayesian_figure_shows_the_numbers_of_the_table(tmp_path):
    from kd.statistics.bayesian import posterior_figure

    table = published_table().iloc[:, :3]
    comparison = compare_runs(seeded_records(table), ComparisonOptions(model_keys=("model",)))
    write_outputs(comparison, tmp_path, ["csv"])
    rows = pd.read_csv(tmp_path / "bayesian.csv")
    assert len(rows) == 3 and all((tmp_path / path).is_file() for path in rows["plot"])
    for result, row in zip(comparison.bayesian, rows.itertuples()):
        figure = posterior_figure(result)
        texts = " ".join(t.get_text() for t in figure.axes[0].texts)
        for p in (row.p_a_better, row.p_equivalent, row.p_b_better):
            assert f"{p:.3f}" in texts
        assert row.a in texts.replace("\n", "") and row.b in texts.replace("\n", "")
    for path in rows["plot"]:  # wide enough for two labels, not baycomp's 354-480 px
        header = (tmp_path / path).read_bytes()[:24]
        assert int.from_bytes(header[16:20], "big") >= 600

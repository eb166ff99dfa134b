"""Per corpus, did a model pass its baseline (kd.statistics.versus): the difference of seed means by
hand, the bootstrap interval against the exact bootstrap distribution (every resample enumerated in
plain Python) and scipy.stats.bootstrap, verdicts and counts on hand cases, the plan's `versus:` key
and its defaults, and `kd plan report`'s section from hand-made finished runs."""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from kd.errors import FieldError, KdError
from kd.jobs.plan import load_plan
from kd.statistics.compare import RunRecord, compare_runs
from kd.statistics.comparison_options import BayesianOptions, ComparisonOptions
from kd.statistics.comparison_report import render_markdown, write_outputs, write_results_json
from kd.statistics.report_versus import TITLE
from kd.statistics.versus import count_line, verdict, versus_counts, versus_table
from tests.test_plan import corpora, line_of, resolved, tiny_plan, write_plan  # noqa: F401 (a fixture)


def seeded(values) -> list[tuple[str, float]]:
    return [(str(seed), float(v)) for seed, v in enumerate(values)]


def exact_bootstrap(x, y) -> list[float]:
    """Every equally likely (resample of x, resample of y) difference of means, sorted: n^n * m^m of them."""
    means = [[sum(draw) / len(values) for draw in itertools.product(values, repeat=len(values))] for values in (x, y)]
    return sorted(a - b for a in means[0] for b in means[1])


def test_the_difference_is_the_model_mean_minus_the_baseline_mean_in_points():
    cells = {("A", "c"): seeded([0.80, 0.82, 0.84]), ("B", "c"): seeded([0.78, 0.79, 0.80])}
    row = versus_table(cells, [("A", "B")], ["c"], scale=100).iloc[0]
    assert (row.model_mean, row.baseline_mean, row.difference) == pytest.approx((82.0, 79.0, 3.0))
    assert (row.model_seeds, row.baseline_seeds) == (3, 3)


def test_the_interval_is_the_percentile_interval_of_the_exact_bootstrap_distribution():
    x, y = [80.0, 82.0, 87.0], [78.0, 79.0, 83.0]
    row = versus_table({("A", "c"): seeded(x), ("B", "c"): seeded(y)}, [("A", "B")], ["c"], seed=3).iloc[0]
    exact = exact_bootstrap(x, y)  # 729 differences
    # 2,000 resamples put the 2.5% quantile within 3 standard errors (3 * 0.35%) of its level.
    assert exact[math.floor(0.0145 * len(exact))] <= row.low <= exact[math.ceil(0.0355 * len(exact))]
    assert exact[math.floor(0.9645 * len(exact))] <= row.high <= exact[math.ceil(0.9855 * len(exact))]
    # The exact bounds are [-1.33, -0.67] and [7.0, 7.33]: resampling the seeds as pairs (differences 2, 3,
    # 4: an interval within [2, 4]) or the model's seeds alone (never below 0) would fail here.
    assert row.low < 0 < row.high and verdict(row.low, row.high) == "not separable"


def test_the_interval_agrees_with_scipy_bootstrap_over_two_independent_samples():
    x, y = [71.2, 73.5, 70.1, 74.0, 72.2], [69.0, 70.4, 71.9, 68.5, 70.0]
    row = versus_table({("A", "c"): seeded(x), ("B", "c"): seeded(y)}, [("A", "B")], ["c"]).iloc[0]
    scipy = stats.bootstrap((np.array(x), np.array(y)), lambda a, b, axis: a.mean(axis) - b.mean(axis),
                            paired=False, vectorized=True, method="percentile", n_resamples=50000,
                            random_state=1).confidence_interval
    # Monte Carlo error of a 2.5% quantile of 2,000 resamples here: about 0.06 points.
    assert (row.low, row.high) == pytest.approx((scipy.low, scipy.high), abs=0.25)
    assert row.low > 0 and row.verdict == "passed"


@pytest.mark.parametrize("low, high, expected", [(0.1, 2.0, "passed"), (-2.0, -0.1, "behind"), (-1.0, 1.0, "not separable"),
                                                 (0.0, 1.0, "not separable"), (-1.0, 0.0, "not separable"),
                                                 (math.nan, math.nan, "no interval")])
def test_verdicts_by_hand(low, high, expected):
    assert verdict(low, high) == expected


def test_counts_per_pair_and_no_interval_from_one_seed():
    noise = np.array([-0.1, 0.0, 0.1])
    base = {"c1": 70, "c2": 71, "c3": 72, "c4": 73, "c5": 74, "c6": 75}
    shift = {"c1": 5, "c2": 4, "c3": 3, "c4": 6, "c5": -5, "c6": 0}  # 4 above, 1 below, 1 equal
    cells = {}
    for corpus, value in base.items():
        cells[("B", corpus)] = seeded(value + noise)
        cells[("A", corpus)] = seeded(value + shift[corpus] + noise)
        cells[("S", corpus)] = seeded([value + 1])  # one seed
    table = versus_table(cells, [("A", "B"), ("S", "B")], list(base))
    assert list(table["verdict"][:6]) == ["passed"] * 4 + ["behind", "not separable"]
    assert table["low"][6:].isna().all() and set(table["verdict"][6:]) == {"no interval"}
    lines = [count_line(row) for row in versus_counts(table).to_dict("records")]
    assert lines == ["passed on 4 of 6 corpora, behind on 1, not separable on 1",
                     "passed on 0 of 6 corpora, no interval on 6 (one seed)"]


def test_a_pairs_interval_does_not_change_when_other_models_or_corpora_join():
    rng = np.random.default_rng(0)
    cells = {(m, c): seeded(rng.normal(70, 1, 3)) for m in "ABC" for c in ("x", "y", "z")}
    alone = versus_table(cells, [("A", "B")], ["y"])
    more = versus_table(cells, [("C", "B"), ("A", "C"), ("A", "B")], ["x", "y", "z"])
    row = more[(more.model == "A") & (more.baseline == "B") & (more.corpus == "y")]
    assert row[["low", "high"]].to_numpy().tolist() == alone[["low", "high"]].to_numpy().tolist()


def fraction_runs(means: dict[str, dict[str, float]], offsets=(-0.5, 0.0, 0.5)) -> list[RunRecord]:
    return [RunRecord(f"{c}-{m}-{s}", {"task": c, "model": m, "seed": str(s)}, {}, {"test_f1": (v + o) / 100})
            for m, row in means.items() for c, v in row.items() for s, o in enumerate(offsets)]


MEANS = {"STM": {"x": 70.0, "y": 72.0, "z": 75.0}, "MTM": {"x": 74.0, "y": 73.0, "z": 78.0},
         "SM": {"x": 76.0, "y": 73.0, "z": 75.0}}


def test_compare_reports_the_pairs_under_the_names_asked_even_when_merged(tmp_path):
    means = {**MEANS, "SM_copy": dict(MEANS["SM"])}  # scores exactly as SM: merged into "SM = SM_copy"
    options = ComparisonOptions(model_keys=("model",), bayesian=BayesianOptions(rope=0),
                                versus=(("SM_copy", "MTM"), ("SM", "STM")))
    comparison = compare_runs(fraction_runs(means), options)
    assert "SM = SM_copy" in comparison.table.mean.columns
    table = comparison.versus
    assert list(zip(table.model, table.baseline, table.corpus)) == [
        ("SM_copy", "MTM", "x"), ("SM_copy", "MTM", "y"), ("SM_copy", "MTM", "z"),
        ("SM", "STM", "x"), ("SM", "STM", "y"), ("SM", "STM", "z")]
    assert table["difference"].tolist() == pytest.approx([2.0, 0.0, -3.0, 6.0, 1.0, 0.0])
    assert table["verdict"].tolist() == ["passed", "not separable", "behind", "passed", "passed", "not separable"]

    plain = render_markdown(compare_runs(fraction_runs(means), ComparisonOptions(model_keys=("model",),
                                                                                 bayesian=BayesianOptions(rope=0))))
    markdown = render_markdown(comparison)
    assert markdown.startswith(plain.rstrip("\n")) and f"## {TITLE}" not in plain  # the rest unchanged
    assert "- SM_copy vs MTM: passed on 1 of 3 corpora, behind on 1, not separable on 1" in markdown
    assert "| SM | STM | x | 76.00 | 70.00 | +6.00 | [" in markdown

    files = write_outputs(comparison, tmp_path, ["csv"])
    results = json.loads(json.dumps(write_results_json(comparison, tmp_path, files, None)))
    assert results["versus"]["counts"][1] == {"model": "SM", "baseline": "STM", "corpora": 3, "passed": 2, "behind": 0,
                                              "not separable": 1, "no interval": 0}
    assert len(results["versus"]["results"]) == 6 and (tmp_path / "versus.csv").read_text().count("\n") == 7


def test_compare_refuses_a_model_it_does_not_have_naming_the_field():
    with pytest.raises(FieldError, match=r"^versus 'TSM': not a model of the comparison \(models: MTM, SM, STM\)$"):
        compare_runs(fraction_runs(MEANS), ComparisonOptions(model_keys=("model",), versus=(("TSM", "MTM"),)))
    with pytest.raises(FieldError, match="^versus 'SM:SM': a model cannot be its own baseline$"):
        compare_runs(fraction_runs(MEANS), ComparisonOptions(model_keys=("model",), versus=(("SM", "SM"),)))
    partial = [r for r in fraction_runs(MEANS) if not (r.tags["model"] == "SM" and r.tags["task"] == "z")]
    with pytest.raises(FieldError, match="^versus 'SM': left out of the comparison: missing on some corpora$"):
        compare_runs(partial, ComparisonOptions(model_keys=("model",), drop_incomplete=True, versus=(("SM", "MTM"),)))


def test_a_plan_table_measures_students_against_their_teacher_and_the_stm_by_default(corpora, tmp_path):
    plan = tiny_plan(corpora)
    plan["caches"]["own"] = {"teachers": ["STM"]}  # a single-corpus teacher named as a model
    plan["models"]["SS"] = {"kind": "student", "cache": "own"}
    plan["tables"]["table1"]["models"].append("SS")
    table = load_plan(write_plan(tmp_path / "plan.yaml", plan)).tables["table1"]
    assert table.versus == (("SM", "MTM"), ("SM", "STM"), ("ensemble_SM", "MTM"), ("ensemble_SM", "STM"), ("SS", "STM"))

    plan["tables"]["table1"]["versus"] = {"ensemble_SM": ["SM", "MTM"]}
    assert load_plan(write_plan(tmp_path / "plan.yaml", plan)).tables["table1"].versus == (
        ("ensemble_SM", "SM"), ("ensemble_SM", "MTM"))
    plan["tables"]["table1"]["versus"] = {}
    assert load_plan(write_plan(tmp_path / "plan.yaml", plan)).tables["table1"].versus == ()


@pytest.mark.parametrize("versus, fragment, message", [
    ({"TSM": ["MTM"]}, "TSM:", "tables.table1.versus.TSM: 'TSM': not a model of this table"),
    ({"SM": ["MTM", "Nobody"]}, "- Nobody", "tables.table1.versus.SM[1]: 'Nobody': not a model of this table"),
    ({"SM": ["SM"]}, "- SM", "tables.table1.versus.SM[0]: 'SM': a model cannot be its own baseline"),
    ({"SM": 3}, "SM: 3", "tables.table1.versus.SM: expected a list of names"),
    (["SM"], "versus:", "tables.table1.versus: expected a mapping of names")])
def test_a_bad_versus_is_one_line_naming_file_line_and_key(corpora, tmp_path, versus, fragment, message):
    plan = tiny_plan(corpora)
    plan["tables"]["table1"]["versus"] = versus
    path = write_plan(tmp_path / "plan.yaml", plan)
    with pytest.raises(KdError) as raised:
        load_plan(path)
    lines = path.read_text().splitlines()
    start = line_of(path.read_text(), "versus:")
    line = next(n for n in range(start, len(lines) + 1) if fragment in lines[n - 1])  # from `versus:` down
    assert str(raised.value).startswith(f"{path}:{line}: {message}"), str(raised.value)


# Hand-made cell means (F1 points) of the tiny plan's table; each cell's 2 seeds are the mean -/+ 0.5.
PLAN_MEANS = {"STM": {"tiny": 80.0, "other": 71.0}, "MTM": {"tiny": 75.0, "other": 74.0},
              "SM": {"tiny": 80.0, "other": 70.0}, "ensemble_SM": {"tiny": 77.0, "other": 74.0}}


def finish_cell_runs(client, experiment_id: str, resolved_plan) -> None:
    """A finished run per cell of table1, tagged as `kd plan run` tags them, with PLAN_MEANS's scores
    (a teacher's run holds every corpus's, as a multi-task run logs them)."""
    from kd.jobs.plan_runs import CELL_TAG
    from kd.tracking.metrics import corpus_metric

    for model, cells in resolved_plan.graph.columns("table1").items():
        for cell in cells:
            offset = (-0.5, 0.5)[resolved_plan.plan.seeds.index(cell.seed)]
            corpora = [cell.corpus] if cell.corpus else list(resolved_plan.plan.corpora)
            run = client.create_run(experiment_id, tags={CELL_TAG: cell.cell_id, "task": ",".join(corpora),
                                                         "seed": str(cell.seed)})
            for corpus in corpora:
                name = "test_f1" if cell.corpus else corpus_metric("test_f1", corpus)
                client.log_metric(run.info.run_id, name, (PLAN_MEANS[model][corpus] + offset) / 100)
            client.set_terminated(run.info.run_id)


def test_plan_report_says_per_corpus_whether_each_student_passed_its_teacher_and_the_stm(corpora, tmp_path, tracking):
    from kd.jobs.plan_report import report_plan
    from kd.tracking.backend import open_client

    plan_resolved = resolved(tmp_path / "plan", tiny_plan(corpora))
    client = open_client(tracking)
    experiment_id = client.create_experiment("e")
    finish_cell_runs(client, experiment_id, plan_resolved)
    plan_run = client.create_run(experiment_id, tags={"model_kind": "plan"})
    results = report_plan(plan_resolved, client, "e", plan_run.info.run_id, tmp_path / "reports", formats=("md",))

    versus = results["table1"]["versus"]
    rows = {(r["model"], r["baseline"], r["corpus"]): (round(r["difference"], 6), r["verdict"]) for r in versus["results"]}
    # Each side's resampled mean is its mean -0.5, +0 or +0.5 (probabilities 1/4, 1/2, 1/4): a difference
    # of -1 reaches 0 with probability 1/16 > 2.5%, so its interval holds 0; one of 2 or more does not.
    assert rows == {("SM", "MTM", "tiny"): (5.0, "passed"), ("SM", "MTM", "other"): (-4.0, "behind"),
                    ("SM", "STM", "tiny"): (0.0, "not separable"), ("SM", "STM", "other"): (-1.0, "not separable"),
                    ("ensemble_SM", "MTM", "tiny"): (2.0, "passed"), ("ensemble_SM", "MTM", "other"): (0.0, "not separable"),
                    ("ensemble_SM", "STM", "tiny"): (-3.0, "behind"), ("ensemble_SM", "STM", "other"): (3.0, "passed")}
    markdown = (tmp_path / "reports" / "table1" / "table.md").read_text()
    assert f"## {TITLE}" in markdown and results["table1"]["markdown"].endswith(markdown)
    assert "- SM vs MTM: passed on 1 of 2 corpora, behind on 1" in markdown
    assert "- ensemble_SM vs STM: passed on 1 of 2 corpora, behind on 1" in markdown


def test_parse_versus_reads_repeated_and_semicolon_separated_groups():
    from kd.statistics.versus import parse_versus

    assert parse_versus(["SM:MTM, STM;SM_text:MTM", " TSM : STM "]) == (
        ("SM", "MTM"), ("SM", "STM"), ("SM_text", "MTM"), ("TSM", "STM"))
    for bad in ("SM", "SM:", ":MTM"):
        with pytest.raises(FieldError, match="expected MODEL:BASELINE"):
            parse_versus([bad])


def test_kd_compare_versus_writes_the_section_and_words_errors_as_the_option(tracking, tmp_path):
    from click.testing import CliRunner

    from kd.cli.main import cli
    from tests.conftest import one_line_error
    from tests.test_compare import log_table

    table = pd.DataFrame(MEANS).loc[["x", "y", "z"]]
    log_table(tracking, "v", table, seeds=3, noise=0.5)
    args = ["compare", "--experiment", "v", "--model-key", "model", "--bayesian", "0", "--no-log", "--format", "md",
            "--out", str(tmp_path)]
    result = CliRunner().invoke(cli, [*args, "--versus", "SM:MTM,STM"])
    assert result.exit_code == 0, result.output
    assert "- SM vs MTM: passed on 1 of 3 corpora, behind on 1, not separable on 1" in result.output
    assert "- SM vs STM: passed on 2 of 3 corpora, not separable on 1" in result.output
    bad = CliRunner().invoke(cli, [*args, "--versus", "SM:TSM"])
    assert bad.exit_code == 2 and one_line_error(bad) == "error: --versus TSM: not a model of the comparison (models: MTM, SM, STM)"

"""Small report details of issue 26: `cells.csv` in F1 points as the tables, a blank line between
`table.md`'s bullets and the note after them, "1 table" in `kd plan show`, and no warning about a
model `--drop-incomplete` left out."""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from kd.cli.main import cli
from kd.statistics.compare import RunRecord, compare_runs
from kd.statistics.comparison_options import ComparisonOptions
from kd.statistics.comparison_report import render_markdown, write_outputs
from tests.conftest import isolated_store, one_line_error
from tests.test_compare import published_table
from tests.test_plan import corpora, tiny_plan, write_plan  # noqa: F401 (a fixture)

OFFSETS = (-0.6, 0.0, 0.9)  # in F1 points


def fraction_records(table: pd.DataFrame, seeds=OFFSETS) -> list[RunRecord]:
    """One run per corpus, model and seed, scores logged as fractions as kd logs them."""
    return [RunRecord(f"{c}-{m}-{s}", {"task": c, "model": m, "seed": str(s)}, {}, {"test_f1": (v + offset) / 100})
            for c, row in table.iterrows() for m, v in row.items() for s, offset in enumerate(seeds)]


def test_cells_csv_is_in_f1_points_as_the_tables(tmp_path):
    table = published_table().iloc[:5, :3]
    comparison = compare_runs(fraction_records(table), ComparisonOptions(model_keys=("model",)))
    write_outputs(comparison, tmp_path, ["csv"])
    cells = pd.read_csv(tmp_path / "cells.csv").set_index(["corpus", "model"])
    points = np.array(OFFSETS)
    assert len(cells) == table.size
    for corpus, row in table.iterrows():
        for model, value in row.items():
            cell = cells.loc[(corpus, model)]
            assert cell["mean"] == pytest.approx(value + points.mean())
            assert cell["std"] == pytest.approx(np.std(value + points, ddof=1))
            assert cell["var"] == pytest.approx(np.var(value + points, ddof=1))
            assert cell["n"] == len(OFFSETS)
    shown = pd.read_csv(tmp_path / "table.csv", index_col="corpus")  # the table beside it, same scale
    assert shown.loc[table.index[0], table.columns[0]] == pytest.approx(table.iloc[0, 0] + points.mean(), abs=0.01)


def kd_tagged_records() -> list[RunRecord]:
    """kd's own tags (a legend of model definitions), one seed each (the variance note), 3 corpora
    (notes on what the tests lack)."""
    records = []
    for index, corpus in enumerate(["A", "B", "C"]):
        records.append(RunRecord(f"stm{corpus}", {"task": corpus, "model_kind": "stm", "output": "crf"}, {},
                                 {"test_f1": 0.80 + index / 100}))
        records.append(RunRecord(f"st{corpus}", {"task": corpus, "model_kind": "student", "output": "crf",
                                                 "loss": "logits", "ensemble": "single"},
                                 {"alpha": "0.5", "beta": "0.5", "gamma": "0.0"}, {"test_f1": 0.83 - index / 50}))
    return records


@pytest.mark.parametrize("records", [kd_tagged_records(), fraction_records(published_table().iloc[:3, :2], (0.0,))],
                         ids=["legend", "notes"])
def test_a_line_after_a_bullet_list_is_a_paragraph_of_its_own(records, tmp_path):
    """Markdown runs a line directly after a list item into that item (MLflow's preview does):
    every paragraph after bullets must follow a blank line."""
    write_outputs(compare_runs(records), tmp_path, ["md"])
    lines = (tmp_path / "table.md").read_text().splitlines()
    bullets = [i for i, line in enumerate(lines) if line.startswith("- ")]
    assert bullets, "the report has bullets to check"
    after = [(lines[i], lines[i + 1]) for i in bullets
             if i + 1 < len(lines) and lines[i + 1].strip() and not lines[i + 1].startswith("- ")]
    assert after == []
    # The case checked is there: a list's last bullet, then a paragraph that is not a bullet.
    assert any(i + 2 < len(lines) and not lines[i + 1].strip() and lines[i + 2].strip()
               and not lines[i + 2].startswith("- ") for i in bullets)


def test_plan_show_says_1_table_or_n_tables(corpora, tmp_path):  # noqa: F811 (the fixture)
    one = tiny_plan(corpora)
    two = copy.deepcopy(one)
    two["tables"]["table2"] = copy.deepcopy(two["tables"]["table1"])
    outputs = []
    with isolated_store(tmp_path):
        for name, plan in (("one", one), ("two", two)):
            result = CliRunner().invoke(cli, ["plan", "show", str(write_plan(tmp_path / f"{name}.yaml", plan)),
                                              "--work", str(tmp_path / "work")])
            assert result.exit_code == 0, result.output
            outputs.append(result.output.splitlines()[0])
    assert outputs[0].endswith(", 1 table (table1)") and "tables" not in outputs[0]
    assert outputs[1].endswith(", 2 tables (table1, table2)")


def test_drop_incomplete_lists_the_dropped_model_and_does_not_warn_about_it(tmp_path):
    table = published_table().iloc[:5, :4]
    records = [r for r in fraction_records(table) if not (r.tags["task"] == "BC2GM" and r.tags["model"] == "MTM")]
    # MTM also repeats a seed on AnatEM and has 4 seeds there: both would be warned about if MTM stayed.
    repeat = next(r for r in records if r.tags["task"] == "AnatEM" and r.tags["model"] == "MTM")
    records.append(RunRecord("again", dict(repeat.tags), {}, dict(repeat.metrics), start_time=1))
    records.append(RunRecord("extra", {**repeat.tags, "seed": "9"}, {}, dict(repeat.metrics)))
    kept = compare_runs([r for r in records if r.tags["model"] != "MTM"], ComparisonOptions(model_keys=("model",)))
    assert kept.warnings == []  # the other models alone: nothing to warn about
    kept_mtm = compare_runs([r for r in records if r.tags["task"] != "BC2GM"], ComparisonOptions(model_keys=("model",)))
    assert any(w.startswith("MTM: ") for w in kept_mtm.warnings)  # the warnings the drop must silence
    comparison = compare_runs(records, ComparisonOptions(model_keys=("model",), drop_incomplete=True))
    assert comparison.dropped_models == ["MTM"]
    assert not any("MTM" in w for w in comparison.warnings)
    write_outputs(comparison, tmp_path, ["md"])
    assert not any(line.startswith("Warning:") and "MTM" in line
                   for line in (tmp_path / "table.md").read_text().splitlines())


def test_predict_refuses_a_multi_task_model_without_task_before_loading_its_weights(tmp_path):
    """The saved model's description lists its tasks: the refusal needs no weights (none are here)."""
    from kd.models.io import WEIGHTS_FILE, save_model
    from tests.test_model_io import make

    model, vocabularies = make()
    folder = save_model(model, vocabularies, tmp_path / "model")
    text = tmp_path / "input.txt"
    text.write_text("IL-2 binds p53 .\n")
    runner = CliRunner()

    def predict(*args: str):
        return runner.invoke(cli, ["predict", "--model", str(folder), "--input", str(text), *args])
    tagged = predict("--task", "BC2GM")
    assert tagged.exit_code == 0, tagged.output
    assert [line.split("\t")[0] for line in tagged.output.splitlines() if line] == ["IL-2", "binds", "p53", "."]
    (folder / WEIGHTS_FILE).unlink()  # loading the model now fails: a refusal must come before it
    assert one_line_error(predict()) == \
        "error: the model tags several corpora (BC2GM, BC5CDR.chem): choose one with --task"
    assert one_line_error(predict("--task", "nope")) == \
        "error: --task nope: the model has no such task; it has BC2GM, BC5CDR.chem"
    assert predict("--task", "BC2GM").exit_code == 2  # a chosen task loads the weights, which are gone


def test_one_pair_is_one_pair_in_table_md():
    """Two models make one pair: the pairwise section says "over 1 pair", not "1 pairs"."""
    table = published_table().iloc[:5, :2]
    markdown = render_markdown(compare_runs(fraction_records(table), ComparisonOptions(model_keys=("model",))))
    assert "Holm-adjusted over 1 pair)" in markdown and "1 pairs" not in markdown
    three = render_markdown(compare_runs(fraction_records(published_table().iloc[:5, :3]),
                                         ComparisonOptions(model_keys=("model",))))
    assert "Holm-adjusted over 3 pairs)" in three

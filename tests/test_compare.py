"""`kd compare` on real published results, checked against scipy on the same matrix."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pandas as pd
import pytest
import scikit_posthocs as sp
from click.testing import CliRunner
from mlflow import MlflowClient
from scipy import stats

from kd.cli.main import cli
from kd.statistics.compare import RunRecord, compare_runs
from kd.statistics.comparison_options import ComparisonOptions
from kd.tracking.runs import TrackedRun
from kd.tracking.backend import open_client
from tests.conftest import REPO

REFERENCE = REPO.parent / "shared" / "reference" / "information2023-table1.tsv"
# Table 1 of Mehmood et al., Information 2023, 14(5), 255, as a fallback when shared/ is absent.
FALLBACK = """dataset\tSTM\tMTM\tSM_alpha0\tSM_alpha0.5\tSM_alpha1
AnatEM\t86.7\t86.7\t87.1\t87.1\t87.3
BC2GM\t81.2\t80.0\t80.7\t81.1\t81.4
BC4CHEMD\t90.1\t86.6\t89.3\t89.4\t89.4
BC5CDR\t88.0\t87.3\t87.4\t87.9\t88.1
BioNLP09\t87.6\t88.3\t88.8\t88.4\t88.7
BioNLP11EPI\t82.7\t84.4\t84.2\t84.7\t82.9
BioNLP11ID\t85.7\t87.2\t87.0\t87.1\t85.9
BioNLP13CG\t82.1\t84.0\t82.9\t83.6\t82.5
BioNLP13GE\t75.6\t79.3\t77.6\t77.8\t75.4
BioNLP13PC\t86.8\t88.6\t88.0\t88.3\t87.2
CRAFT\t84.4\t82.3\t82.6\t84.0\t84.5
ExPTM\t73.5\t80.9\t76.1\t76.5\t73.6
JNLPBA\t70.8\t70.3\t70.6\t72.1\t71.2
linnaeus\t87.4\t88.4\t88.5\t88.4\t87.5
NCBI\t84.3\t85.0\t84.9\t85.3\t84.2
"""


def published_table() -> pd.DataFrame:
    text = REFERENCE.read_text() if REFERENCE.is_file() else FALLBACK
    rows = [r for r in csv.reader(text.splitlines(), delimiter="\t") if r and not r[0].startswith("#")]
    return pd.DataFrame([[float(v) for v in r[1:]] for r in rows[1:]], index=[r[0] for r in rows[1:]],
                        columns=rows[0][1:])


def log_table(uri: str, experiment: str, table: pd.DataFrame, seeds: int = 1, noise: float = 0.0) -> None:
    """One run per model, corpus and seed; seed offsets cancel out, so each cell's mean is the table value."""
    client = open_client(uri)
    offsets = np.linspace(-noise, noise, seeds) if seeds > 1 else [0.0]
    for corpus, row in table.iterrows():
        for model, value in row.items():
            for seed, offset in enumerate(offsets):
                run = TrackedRun.start(client, experiment, None, {"task": corpus, "model": model, "seed": seed})
                run.log_metrics({"test_f1": (value + offset) / 100})
                run.finish()


def test_published_table_statistics_match_scipy(tracking, tmp_path):
    table = published_table()
    log_table(tracking, "published", table)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["compare", "--experiment", "published", "--model-key", "model",
                                      "--posthoc", "conover", "--bayesian", "0", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])

    matrix = table / 100
    statistic, p_value = stats.friedmanchisquare(*(matrix[c].to_numpy() for c in matrix.columns))
    assert summary["friedman_statistic"] == pytest.approx(statistic, rel=1e-12)
    assert summary["friedman_p_value"] == pytest.approx(p_value, rel=1e-12)
    ranks = np.mean([stats.rankdata(-row) for row in matrix.to_numpy()], axis=0)
    assert summary["average_ranks"] == pytest.approx(dict(zip(matrix.columns, ranks)), rel=1e-12)
    # The published averages (83.1 83.9 83.7 84.1 83.3) came from unrounded per-seed scores; the
    # table's cells are rounded to 0.1, so the averages agree to within that rounding.
    results = json.loads((out / "results.json").read_text())
    averages = {m: np.mean([results["cells"][c][m]["mean"] for c in results["corpora"]]) * 100 for m in table.columns}
    published = {"STM": 83.1, "MTM": 83.9, "SM_alpha0": 83.7, "SM_alpha0.5": 84.1, "SM_alpha1": 83.3}
    assert averages == pytest.approx(published, abs=0.06)
    conover = sp.posthoc_conover_friedman(matrix.to_numpy())
    assert np.allclose(pd.DataFrame(results["posthoc_p_values"]).loc[list(matrix.columns), list(matrix.columns)],
                       conover.to_numpy())
    q = stats.studentized_range.ppf(0.95, 5, math.inf) / math.sqrt(2)
    assert summary["critical_difference"] == pytest.approx(q * math.sqrt(5 * 6 / (6 * 15)))
    for name in ("table.md", "table.csv", "table.tex", "results.json", "cd_diagram.png", "significance.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    assert (out / "cd_diagram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "table.md").read_text()
    assert "| BioNLP13GE | **79.30** |" in markdown  # best per row marked: the MTM wins there
    assert "| Average | 83.95 |" in markdown

    client = MlflowClient(tracking)
    comparison = client.get_run(summary["comparison_run_id"])
    assert comparison.data.tags["model_kind"] == "comparison"
    assert comparison.data.metrics["friedman_statistic"] == pytest.approx(statistic)
    assert {a.path for a in client.list_artifacts(comparison.info.run_id, "comparison")} >= {
        "comparison/table.md", "comparison/cd_diagram.png", "comparison/results.json"}
    # Comparison runs are never compared themselves.
    again = CliRunner().invoke(cli, ["compare", "--experiment", "published", "--model-key", "model", "--out",
                                     str(out), "--json", "--no-log"])
    assert json.loads(again.stdout.strip().splitlines()[-1])["friedman_statistic"] == summary["friedman_statistic"]


def test_seeds_are_averaged_per_cell(tracking, tmp_path):
    table = published_table().iloc[:4, :3]
    log_table(tracking, "seeds", table, seeds=3, noise=0.6)
    result = CliRunner().invoke(cli, ["compare", "--experiment", "seeds", "--model-key", "model", "--out",
                                      str(tmp_path / "o"), "--no-log", "--json"])
    assert result.exit_code == 0, result.output
    cells = json.loads((tmp_path / "o" / "results.json").read_text())["cells"]
    for corpus, row in table.iterrows():
        for model, value in row.items():
            cell = cells[corpus][model]
            assert cell["n"] == 3
            assert cell["mean"] == pytest.approx(value / 100)
            assert cell["var"] == pytest.approx(np.var([(value - 0.6) / 100, value / 100, (value + 0.6) / 100], ddof=1))


def records_for(table: pd.DataFrame) -> list[RunRecord]:
    return [RunRecord(f"{c}-{m}", {"task": c, "model": m}, {}, {"test_f1": v}) for c, row in table.iterrows()
            for m, v in row.items()]


def test_missing_cell_is_named_and_can_be_dropped():
    table = published_table().iloc[:5, :4]
    records = [r for r in records_for(table) if not (r.tags["task"] == "BC2GM" and r.tags["model"] == "MTM")]
    with pytest.raises(Exception, match="MTM lacks BC2GM"):
        compare_runs(records, ComparisonOptions(model_keys=("model",)))
    comparison = compare_runs(records, ComparisonOptions(model_keys=("model",), drop_incomplete=True))
    assert comparison.dropped_models == ["MTM"] and "MTM" not in comparison.table.mean.columns


def test_a_repeated_seed_is_one_sample_the_newest_and_is_warned_about():
    """Two runs of seed 1 in one cell (a rerun) are not two samples: the newer one counts."""
    table = published_table().iloc[:5, :4]
    records = [RunRecord(f"{c}-{m}-{s}", {"task": c, "model": m, "seed": str(s)}, {}, {"test_f1": v + s},
                         start_time=100) for c, row in table.iterrows() for m, v in row.items() for s in (1, 2)]
    model, corpus = table.columns[0], table.index[0]
    rerun = RunRecord("rerun", {"task": corpus, "model": model, "seed": "1"}, {}, {"test_f1": 0.0}, start_time=200)
    older = RunRecord("older", {"task": corpus, "model": model, "seed": "2"}, {}, {"test_f1": 99.0}, start_time=50)
    comparison = compare_runs(records + [rerun, older], ComparisonOptions(model_keys=("model",)))
    cell = table.loc[corpus, model]
    assert comparison.table.count.loc[corpus, model] == 2
    assert comparison.table.mean.loc[corpus, model] == pytest.approx((0.0 + cell + 2) / 2)
    assert any(w.startswith(f"{model}: 2 extra run(s)") for w in comparison.warnings)
    assert not any("different numbers of seeds" in w for w in comparison.warnings)


def test_unequal_seed_counts_are_named_and_one_seed_has_no_variance():
    table = published_table().iloc[:5, :4]
    records = records_for(table)  # one seed everywhere (no seed label) ...
    extra = table.columns[1]
    records += [RunRecord(f"{c}-{extra}-again", {"task": c, "model": extra}, {}, {"test_f1": v + 1.0})
                for c, v in table[extra].items()]  # ... but two for one model
    comparison = compare_runs(records, ComparisonOptions(model_keys=("model",)))
    assert comparison.warnings == [f"cells are means of different numbers of seeds: most have 1, but {extra}: 2"]
    single = table.columns[0]
    assert comparison.table.var[single].isna().all()
    assert comparison.table.var[extra].to_numpy() == pytest.approx([0.5] * 5)  # (1 / sqrt 2) ** 2
    from kd.statistics.comparison_report import render_markdown

    average_variance = next(line for line in render_markdown(comparison).splitlines()
                            if line.startswith("| Average variance"))
    shown = dict(zip(comparison.table.mean.columns, average_variance.strip(" |").split(" | ")[1:]))
    assert shown[single] == "n/a" and shown[extra] == "0.50"
    assert "Warning: cells are means of different numbers of seeds" in render_markdown(comparison)


@pytest.mark.parametrize("rows, columns, note", [(5, 2, "it compares 3 or more models, here 2"),
                                                 (1, 4, "it needs 2 or more corpora, here 1")])
def test_too_few_models_or_corpora_leave_friedman_out_with_a_note(rows, columns, note):
    comparison = compare_runs(records_for(published_table().iloc[:rows, :columns]),
                              ComparisonOptions(model_keys=("model",)))
    assert math.isnan(comparison.result.statistic) and any(note in n for n in comparison.notes)


def test_cli_errors_are_one_line(tracking, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["compare", "--experiment", "nope", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "nope" in result.output and len(result.output.strip().splitlines()) == 1
    log_table(tracking, "small", published_table().iloc[:3, :3])
    result = runner.invoke(cli, ["compare", "--experiment", "small", "--model-key", "model", "--metric", "devel_f1",
                                 "--out", str(tmp_path)])
    assert result.exit_code == 2 and "devel_f1" in result.output


def test_default_model_names_and_teacher_expansion():
    """kd's own tags name the models; a teacher run contributes one cell per corpus."""
    records = []
    for corpus_index, corpus in enumerate(["A", "B", "C"]):
        records.append(RunRecord(f"stm{corpus}", {"task": corpus, "model_kind": "stm", "output": "crf"}, {},
                                 {"test_f1": 0.80 + corpus_index / 100}))
        records.append(RunRecord(f"st{corpus}", {"task": corpus, "model_kind": "student", "output": "crf",
                                                 "loss": "logits", "ensemble": "single"},
                                 {"alpha": "0.5", "beta": "0.5", "gamma": "0.0"}, {"test_f1": 0.82 + corpus_index / 100}))
    records.append(RunRecord("mtm", {"task": "A,B,C", "model_kind": "mtm", "output": "crf"}, {},
                             {"test_f1": 0.5, "test_f1/A": 0.79, "test_f1/B": 0.83, "test_f1/C": 0.85}))
    comparison = compare_runs(records)
    assert list(comparison.table.mean.columns) == ["mtm/crf", "stm/crf", "student/crf/logits(alpha=0.5 beta=0.5)/single"]
    assert comparison.table.mean.loc["B", "mtm/crf"] == pytest.approx(0.83)


def test_students_of_every_registered_loss_are_named_by_the_weights_it_registers():
    """The name comes from the loss registry: `encoder` students differing only in gamma are two models
    (a list kept beside the registry had missed it), and fields a loss ignores stay out of its name."""
    from kd.statistics.compare import default_model_name

    def student(loss: str, **params: float) -> str:
        record = RunRecord("r", {"model_kind": "student", "output": "softmax", "loss": loss, "ensemble": "single"},
                           {k: str(v) for k, v in params.items()}, {})
        return default_model_name(record)

    weights = dict(alpha=0.5, beta=0.5, gamma=0.25, kappa=0.5, tau=2)
    assert student("encoder", **weights) == "student/softmax/encoder(alpha=0.5 beta=0.5 gamma=0.25)/single"
    assert student("encoder", **{**weights, "gamma": 1}) != student("encoder", **weights)
    assert student("kl", **weights) == "student/softmax/kl(alpha=0.5 beta=0.5 tau=2)/single"
    assert student("logits", **weights) == "student/softmax/logits(alpha=0.5 beta=0.5)/single"
    assert student("intermediate", **weights) == \
        "student/softmax/intermediate(alpha=0.5 beta=0.5 gamma=0.25 kappa=0.5)/single"

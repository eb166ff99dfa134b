"""`kd plan show`: the estimate counts each cell's start-up, measured from the experiment's runs
where it can be, and the full plan is shown before its corpora are downloaded (issue 26)."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from kd.cli.main import cli
from kd.jobs.estimate import DEFAULT_CELL_SECONDS, estimate
from tests.conftest import REPO, isolated_store
from tests.test_plan import corpora, resolved, tiny_plan, write_plan  # noqa: F401 (a fixture)


def log_training_run(client, experiment_id: str, tokens: int, epochs: int, seconds: float) -> None:
    run = client.create_run(experiment_id, start_time=1_000, tags={"model_kind": "stm"})
    client.log_metric(run.info.run_id, "train_tokens", tokens)
    client.log_metric(run.info.run_id, "epochs_trained", epochs)
    client.set_terminated(run.info.run_id, "FINISHED", end_time=1_000 + int(seconds * 1000))


def test_start_up_and_rate_are_fitted_to_the_experiments_runs(corpora, tmp_path):
    from kd.tracking.backend import open_client

    with isolated_store(tmp_path) as uri:
        client = open_client(uri)
        experiment = client.create_experiment("measured")
        # By hand: 7 s a run plus 1,000 tokens a second.
        for tokens, epochs in ((2_000, 1), (3_000, 2), (10_000, 3)):
            log_training_run(client, experiment, tokens, epochs, 7 + tokens * epochs / 1_000)
        plan = resolved(tmp_path, tiny_plan(corpora))
        found = estimate(plan, client, "measured")
        assert found.tokens_per_second == pytest.approx(1_000) and found.cell_seconds == pytest.approx(7)
        assert found.source == "fit over 3 finished runs in measured"
        assert found.seconds == pytest.approx(found.epoch_tokens / 1_000 + found.cache_tokens * 8.1 / 159_670
                                              + 7 * len(plan.cells))
        without = estimate(plan, client, None)
        assert without.cell_seconds == DEFAULT_CELL_SECONDS


def test_the_full_plan_is_shown_before_its_corpora_are_downloaded(tmp_path):
    empty = tmp_path / "data"
    empty.mkdir()
    with isolated_store(tmp_path):
        result = CliRunner().invoke(cli, ["plan", "show", str(REPO / "experiments" / "information2023.yaml"),
                                          "--data-dir", str(empty), "--work", str(tmp_path / "work")])
    assert result.exit_code == 0, result.output
    assert "NCBI-disease: unknown (not downloaded: kd data download NCBI-disease --dest DIR)" in result.output
    assert "plus the training on AnatEM, BC2GM" in result.output
    assert f"start-up: {DEFAULT_CELL_SECONDS:.0f} s per cell" in result.output


def test_a_corpus_kd_does_not_know_is_still_an_error(corpora, tmp_path):
    plan = {**tiny_plan(corpora), "corpora": ["tiny", "nosuch"]}
    path = write_plan(tmp_path / "plan.yaml", plan)
    with isolated_store(tmp_path):
        result = CliRunner().invoke(cli, ["plan", "show", str(path), "--work", str(tmp_path / "work")])
    assert result.exit_code == 2 and "'nosuch': no such corpus" in result.output


def test_runs_whose_times_are_load_not_size_give_the_median_rate(corpora, tmp_path):
    """Sizes within 2x and times set by the machine's load: a line through them would say 81 tokens/s
    (issue 25's partial plan run); the estimate takes the median rate instead."""
    from kd.tracking.backend import open_client

    with isolated_store(tmp_path) as uri:
        client = open_client(uri)
        experiment = client.create_experiment("loaded")
        for tokens, seconds in ((24_659, 150), (26_004, 70), (28_020, 160), (31_042, 75)):
            log_training_run(client, experiment, tokens, 10, seconds)
        found = estimate(resolved(tmp_path, tiny_plan(corpora)), client, "loaded")
    # By hand: 246,590/150, 260,040/70, 280,200/160, 310,420/75 tokens a second; the median of the four.
    rates = sorted((246_590 / 150, 260_040 / 70, 280_200 / 160, 310_420 / 75))
    assert found.tokens_per_second == pytest.approx((rates[1] + rates[2]) / 2)
    assert found.cell_seconds == DEFAULT_CELL_SECONDS and found.source == "median of 4 finished runs in loaded"

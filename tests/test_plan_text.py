"""Transfer text in plans (kd.jobs.plan_text): `unlabelled:` on caches and students, a file or a text
specification built by a cell of its own; part of the cells' identity; counted by `kd plan show`;
and students given each corpus's text by one recipe are one model across corpora."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
from click.testing import CliRunner

from kd.data.corpora import load_split
from kd.data.text.builder import TextJob, build_text
from kd.data.text.overlap import sentence_key
from kd.errors import KdError
from kd.jobs.plan import load_plan
from tests.conftest import isolated_store, make_corpora
from tests.test_plan import SMALL, cells_by_label, resolved, write_plan

REST = {"rest_of_train": True, "max_sentences": 50, "seed": 3}


def text_plan(data_dir: Path, text=REST) -> dict:
    """Two corpora, one seed: STM, MTM and a student that learns from each corpus's rest of train."""
    return {"name": "text", "data_dir": str(data_dir), "corpora": ["tiny", "other"], "seeds": [1],
            "subsample": {"train": 60}, "defaults": {"epochs": 1, "train_splits": ["train"], **SMALL},
            "teachers": {"mtm": {"epochs": 2}},
            "caches": {"own": {"teachers": ["mtm"], "unlabelled": copy.deepcopy(text), "dtype": "float32"}},
            "models": {"STM": {"kind": "stm"}, "MTM": {"kind": "teacher", "teacher": "mtm"},
                       "SMU": {"kind": "student", "cache": "own", "loss": "kl", "alpha": 0.5,
                               "unlabelled": True, "unlabelled_ratio": 1.0}},
            "tables": {"t": {"models": ["STM", "MTM", "SMU"], "bayesian": 0}}}


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> Path:
    return make_corpora(tmp_path_factory.mktemp("plan-text") / "corpora")


def test_a_rest_of_train_text_is_a_cell_per_corpus_that_its_cache_and_student_use(corpora, tmp_path):
    cells = cells_by_label(resolved(tmp_path, text_plan(corpora)))
    by_id = {cell.cell_id: label for label, cell in cells.items()}
    assert {"text/own/tiny", "text/own/other", "cache/own/tiny/seed1", "cache/own/other/seed1"} <= set(cells)
    assert [by_id[d] for d in cells["cache/own/tiny/seed1"].depends_on] == ["teacher/mtm/seed1", "text/own/tiny"]
    assert cells["cache/own/tiny/seed1"].config["tasks"] == ["tiny"]  # each corpus's own text: its own cache
    assert [by_id[d] for d in cells["model/SMU/other/seed1"].depends_on] == ["cache/own/other/seed1", "text/own/other"]
    # The text reads the unsampled corpus (its train split's rest), the sample is what the plan trains on.
    assert dict(cells["text/own/tiny"].paths) == {"tiny": str((corpora / "tiny").resolve())}
    assert cells["model/SMU/tiny/seed1"].config["distill"]["unlabelled_ratio"] == 1.0


def test_a_text_from_other_corpora_is_one_cell_guarding_every_cached_corpus(tmp_path):
    from tests.conftest import write_corpus

    corpora = make_corpora(tmp_path / "corpora")
    write_corpus(corpora / "pub", seed=7)
    cells = cells_by_label(resolved(tmp_path, text_plan(corpora, {"from_corpora": ["pub"], "max_sentences": 30})))
    texts = [label for label in cells if label.startswith("text/")]
    assert texts == ["text/own"] and cells["text/own"].config["tasks"] == ["tiny", "other"]
    assert dict(cells["text/own"].paths) == {"pub": str((corpora / "pub").resolve())}
    assert cells["cache/own/seed1"].depends_on[-1] == cells["text/own"].cell_id
    # Built, it holds none of the cached corpora's devel or test sentences (nor pub's).
    sample = resolved(tmp_path, text_plan(corpora)).data.data_dir
    manifest = build_text(TextJob(from_corpora=[corpora / "pub"], out=tmp_path / "t.txt",
                                  for_corpora=[sample / "tiny", sample / "other", corpora / "pub"]))
    keys = {sentence_key(line.split(" ")) for line in (tmp_path / "t.txt").read_text().splitlines()}
    evaluation = {sentence_key(s.tokens) for c in (sample / "tiny", sample / "other", corpora / "pub")
                  for split in ("devel", "test") for s in load_split(c, split)}
    assert manifest["sentences"] == len(keys) > 0 and not keys & evaluation


def test_the_text_specification_is_part_of_the_identity_of_its_cells(corpora, tmp_path):
    base = cells_by_label(resolved(tmp_path / "a", text_plan(corpora)))
    other = cells_by_label(resolved(tmp_path / "b", text_plan(corpora, {**REST, "max_sentences": 40})))
    for label in ("text/own/tiny", "cache/own/tiny/seed1", "model/SMU/tiny/seed1"):
        assert base[label].cell_id != other[label].cell_id
    for label in ("teacher/mtm/seed1", "model/STM/tiny/seed1"):
        assert base[label].cell_id == other[label].cell_id
    again = cells_by_label(resolved(tmp_path / "c", text_plan(corpora)))
    assert {k: c.cell_id for k, c in again.items()} == {k: c.cell_id for k, c in base.items()}


def test_a_file_relative_to_the_plan_is_identified_by_its_content(corpora, tmp_path):
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "t.txt").write_text("aspirin was given\nthe patient showed fever\n")
    plan = text_plan(corpora, "texts/t.txt")
    first = cells_by_label(resolved(tmp_path, plan))
    cache = first["cache/own/seed1"]  # one text for every corpus: one cache
    assert not any(label.startswith("text/") for label in first)
    assert dict(cache.paths) == {"unlabelled": str(tmp_path / "texts" / "t.txt")}
    (tmp_path / "texts" / "t.txt").write_text("aspirin was given\n")
    assert cells_by_label(resolved(tmp_path, plan))["cache/own/seed1"].cell_id != cache.cell_id


@pytest.mark.parametrize("change, message", [
    (lambda p: p["caches"]["own"].pop("unlabelled"), "models.SMU.unlabelled: cache own caches no unlabelled text"),
    (lambda p: p["models"]["SMU"].update(unlabelled={"rest_of_train": True}), "not the text of its cache own"),
    (lambda p: p["models"]["SMU"].pop("unlabelled"), "models.SMU.unlabelled_ratio: applies only with unlabelled"),
    (lambda p: p["caches"]["own"].update(unlabelled={"seed": 2}), "caches.own.unlabelled: expected a file, or"),
    (lambda p: p["caches"]["own"].update(unlabelled={"rest": True}), "caches.own.unlabelled.rest: unknown key"),
    (lambda p: p["caches"]["own"].update(unlabelled="missing.txt"), "'missing.txt': no such file"),
    (lambda p: p["caches"]["own"]["unlabelled"].update(max_sentences=0), "unlabelled.max_sentences: 0: expected"),
])
def test_bad_text_keys_are_one_line_naming_file_line_and_key(corpora, tmp_path, change, message):
    plan = text_plan(corpora)
    change(plan)
    path = write_plan(tmp_path / "plan.yaml", plan)
    with pytest.raises(KdError) as raised:
        load_plan(path)
    assert str(raised.value).startswith(f"{path}:") and message in str(raised.value), str(raised.value)
    assert "\n" not in str(raised.value)


def test_rest_of_train_needs_a_sampled_training_split(corpora, tmp_path):
    plan = text_plan(corpora)
    del plan["subsample"]
    with pytest.raises(KdError, match=r"caches.own.unlabelled.rest_of_train: the plan trains on the whole"):
        resolved(tmp_path, plan)
    assert resolved(tmp_path / "b", plan, max_train_sentences=60).cells  # --max-train-sentences samples it


def test_rest_of_train_holds_no_labelled_or_evaluation_sentence(corpora, tmp_path):
    """The text as the text cell builds it, checked against the corpora themselves."""
    result = resolved(tmp_path, text_plan(corpora, {"rest_of_train": True}))
    sample = result.data.data_dir / "tiny"
    build_text(TextJob(from_corpora=[corpora / "tiny"], for_corpora=[sample, corpora / "tiny"],
                       exclude_train_of=[sample], out=tmp_path / "t.txt"))
    text = {line for line in (tmp_path / "t.txt").read_text().splitlines()}
    keys = {sentence_key(line.split(" ")) for line in text}
    forbidden = {sentence_key(s.tokens) for split in ("devel", "test") for s in load_split(corpora / "tiny", split)}
    forbidden |= {sentence_key(s.tokens) for s in load_split(sample, "train")}
    everything = {sentence_key(s.tokens) for s in load_split(corpora / "tiny", "train")}
    assert keys and not keys & forbidden and keys == everything - forbidden


def test_plan_show_counts_the_text_tokens(corpora, tmp_path):
    from kd.jobs.estimate import estimate

    with_text = estimate(resolved(tmp_path / "a", text_plan(corpora, {"rest_of_train": True})), None, None)
    plain = text_plan(corpora)
    del plain["caches"]["own"]["unlabelled"], plain["models"]["SMU"]["unlabelled"]
    del plain["models"]["SMU"]["unlabelled_ratio"]
    without = estimate(resolved(tmp_path / "b", plain), None, None)
    text = {k: v for k, v in with_text.tokens.items() if k.startswith("unlabelled text/own/")}
    assert set(text) == {"unlabelled text/own/tiny", "unlabelled text/own/other"} and all(v > 0 for v in text.values())
    assert with_text.cells["text"] == 2
    # The caches cache the text once through their teacher; the students, at ratio 1, at most as
    # many unlabelled tokens per epoch as labelled ones.
    assert with_text.cache_tokens - without.cache_tokens == sum(text.values())
    assert 0 < with_text.epoch_tokens - without.epoch_tokens <= sum(text.values())


def test_students_given_each_corpus_text_by_one_recipe_are_one_model(tmp_path):
    from kd.training.distillation import DistillOptions
    from kd.training.identity import identity_tags, tagger_definition
    from kd.training.job_definition import TaggerJob

    files = []
    for name, text in (("a.txt", "aspirin was given\n"), ("b.txt", "fever and asthma\n")):
        (tmp_path / name).write_text(text)
        files.append(str(tmp_path / name))

    def tags(corpus: str, file: str, recipe: str | None) -> dict:
        distill = DistillOptions(cache_run="r", unlabelled=file, unlabelled_recipe=recipe)
        job = TaggerJob(corpora=[corpus], distill=distill)
        return identity_tags(tagger_definition(job), file)

    recipe = '{"rest_of_train":true}'
    one, two = tags("tiny", files[0], recipe), tags("other", files[1], recipe)
    assert one["model_id"] == two["model_id"]  # one model across corpora
    assert one["unlabelled_sha256"] != two["unlabelled_sha256"]  # the texts kept for provenance
    assert tags("tiny", files[0], '{"rest_of_train":false}')["model_id"] != one["model_id"]
    user = tags("tiny", files[0], None)
    assert '"unlabelled":"file"' in user["model_definition"] and user["model_id"] != one["model_id"]
    assert tags("tiny", files[0], None)["model_id"] == tags("other", files[1], None)["model_id"]


@pytest.mark.slow
def test_a_plan_with_text_runs_and_reruns_reusing_its_cells(tmp_path):
    from kd.jobs.plan_runs import runs_by_cell
    from kd.tracking.backend import open_client
    from tests.test_plan_run import run_in_process

    corpora = make_corpora(tmp_path / "corpora")
    plan = text_plan(corpora)
    path = write_plan(tmp_path / "plan.yaml", plan)
    with isolated_store(tmp_path) as uri:
        first = run_in_process("run", path, "--experiment", "text", "--workers", 1, "--threads", 1, "--no-report")
        assert "failed" not in first, first[-3000:]
        again = run_in_process("run", path, "--experiment", "text", "--workers", 1, "--threads", 1, "--no-report")
        cells = resolved(tmp_path / "check", plan).cells
        assert f"{len(cells)} reused" in again, again[-2000:]
        client = open_client(uri)
        runs = runs_by_cell(client, "text", cells)
        assert all([r.info.status for r in runs[c]] == ["FINISHED"] for c in cells)
        by_label = {cells[c].label: rs[0] for c, rs in runs.items()}
        text_run = by_label["text/own/tiny"]
        built = client.download_artifacts(text_run.info.run_id, "text/transfer.txt", str(tmp_path / "got"))
        sentences = Path(built).read_text().splitlines()
        assert len(sentences) == 50 == text_run.data.metrics["text_sentences"]
        student = by_label["model/SMU/tiny/seed1"].data
        assert student.params["unlabelled_ratio"] == "1.0"
        other = by_label["model/SMU/other/seed1"].data
        # One model across corpora, each with its own text (kept as a tag).
        assert student.tags["model_id"] == other.tags["model_id"]
        assert student.tags["unlabelled_sha256"] != other.tags["unlabelled_sha256"]
        cache = by_label["cache/own/tiny/seed1"].data
        assert cache.params["unlabelled"].endswith("transfer.txt")

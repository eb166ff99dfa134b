"""Model identity (kd.training.identity) and how `kd compare` groups by it: runs are seeds of one
model exactly when everything that defines the model but the seed is equal."""
from __future__ import annotations

import json

import pytest

from kd.cache.knowledge import TeacherKnowledge
from kd.statistics.compare import RunRecord, compare_runs
from kd.training.distillation import DistillOptions
from kd.training.identity import default_run_name, identity_tags, tagger_definition
from kd.models.tagger import TaggerConfig
from kd.training.job_definition import TaggerJob
from kd.training.loop import TrainingOptions


def teacher(output: str = "softmax", ensemble: str = "single") -> TeacherKnowledge:
    return TeacherKnowledge(task="A", tags=["O"], widths={}, ensemble=ensemble, teacher_runs=["t"], cache_run="c",
                            parameters=1, teacher_kinds=["bilstm"], teacher_outputs=[output])


def student(seed: int = 1, task_hidden: int = 200, epochs: int = 20, loss: str = "kl") -> TaggerJob:
    return TaggerJob(corpora=["A"], model=TaggerConfig(task_hidden=task_hidden),
                     training=TrainingOptions(epochs=epochs, seed=seed), distill=DistillOptions(loss=loss, cache_run="c"))


def tags_of(job: TaggerJob, knows: TeacherKnowledge | None = None) -> dict[str, str]:
    return identity_tags(tagger_definition(job, knows))


def test_the_seed_does_not_change_the_model_but_teacher_output_size_and_epochs_do():
    base = tags_of(student(seed=1), teacher())
    assert tags_of(student(seed=2), teacher())["model_id"] == base["model_id"]
    variants = {"crf teacher": tags_of(student(), teacher("crf")), "size": tags_of(student(task_hidden=50), teacher()),
                "epochs": tags_of(student(epochs=50), teacher()), "loss": tags_of(student(loss="soft"), teacher()),
                "ensemble": tags_of(student(), teacher(ensemble="seeds"))}
    ids = {name: tags["model_id"] for name, tags in variants.items()}
    assert len(set(ids.values()) | {base["model_id"]}) == len(ids) + 1, ids
    assert base["model_name"] == "student-kl-a0.5-b0.5-t1"
    assert variants["crf teacher"]["model_name"] == "student-kl-a0.5-b0.5-t1-Tcrf"
    assert variants["epochs"]["model_name"] == base["model_name"], "epochs are in the id, not the short name"
    assert json.loads(base["model_definition"])["teacher_output"] == "softmax"


def test_single_and_multi_task_models_are_named_by_kind_and_output():
    assert tags_of(TaggerJob(corpora=["A"], model=TaggerConfig(output="crf")))["model_name"] == "stm-crf"
    assert tags_of(TaggerJob(corpora=["A", "B"]))["model_name"] == "mtm-softmax"
    assert tags_of(TaggerJob(corpora=["A", "B"]))["model_id"] != tags_of(TaggerJob(corpora=["A", "C"]))["model_id"]


def test_a_tuned_model_is_its_search_space_whatever_was_tuned_per_corpus():
    tuned = [tagger_definition(student(task_hidden=h, epochs=e), teacher(), search_space="space")
             for h, e in ((50, 10), (100, 20))]
    assert identity_tags(tuned[0])["model_id"] == identity_tags(tuned[1])["model_id"]
    assert identity_tags(tuned[0])["model_name"] == "tuned-kl-space"


def test_default_run_names():
    assert default_run_name("stm-crf", ["NCBI-disease"], 1) == "stm-crf-NCBI-disease-s1"
    assert default_run_name("mtm-softmax", ["A", "B", "C"], 2) == "mtm-softmax-3corpora-s2"
    assert default_run_name("student-kl-a0.5-b0.5", ["NCBI-disease"], 1) == "kl-a0.5-b0.5-NCBI-disease-s1"


def records_of(name: str, tags: dict[str, str], scores: list[float], seeds=(1, 2)) -> list[RunRecord]:
    return [RunRecord(f"{name}-{corpus}-{seed}", {"task": corpus, "seed": str(seed), **tags}, {},
                      {"test_f1": score + seed / 1000})
            for corpus, score in zip("ABC", scores) for seed in seeds]


def test_compare_keeps_students_of_softmax_and_crf_teachers_apart_and_labels_them_distinctly():
    soft, crf = tags_of(student(), teacher()), tags_of(student(), teacher("crf"))
    short, long = tags_of(student(epochs=10), teacher()), tags_of(student(epochs=50), teacher())
    old = {"model_kind": "stm", "output": "crf"}  # a run logged before model ids: today's key names it
    records = (records_of("soft", soft, [0.80, 0.81, 0.82]) + records_of("crf", crf, [0.83, 0.84, 0.85])
               + records_of("short", short, [0.70, 0.71, 0.72]) + records_of("long", long, [0.75, 0.76, 0.77])
               + records_of("old", old, [0.60, 0.65, 0.62]))
    comparison = compare_runs(records)
    columns = list(comparison.table.mean.columns)
    assert len(columns) == 5, columns
    assert {crf["model_name"], "stm/crf"} <= set(columns)
    # Three students share a short name (they differ in epochs only): their labels add their ids.
    same_name = [c for c in columns if c.startswith(soft["model_name"] + " [")]
    assert sorted(same_name) == sorted(f"{tags['model_name']} [{tags['model_id'][:6]}]" for tags in (soft, short, long))
    assert (comparison.table.count == 2).all().all(), "two seeds per cell: no model's runs merged with another's"
    label = f"{long['model_name']} [{long['model_id'][:6]}]"
    assert comparison.table.mean.loc["A", label] == pytest.approx(0.7515)
    assert "epochs=50" in comparison.legend[label] and "teacher_output=crf" in comparison.legend[crf["model_name"]]
    assert comparison.legend["stm/crf"] == "stm/crf"

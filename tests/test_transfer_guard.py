"""Transfer text in training: the guard that refuses evaluation sentences in `--unlabelled`, the
seeded `--unlabelled-ratio` draws (deterministic, resumable, in the model's identity)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from kd.cli.main import cli
from kd.data.batching import EncodedDataset
from kd.data.conll import read_conll
from kd.data.text.overlap import find_overlap
from kd.data.types import Sentence
from kd.data.vocab import build_vocabularies
from kd.errors import FieldError
from kd.training.distillation import DistillOptions
from kd.training.identity import identity_tags, tagger_definition
from kd.training.jobs import TaggerJob
from kd.training.unlabelled import UnlabelledPlan
from tests.conftest import SMALL_MODEL, make_corpora, one_line_error, run_kd

TRAINING = ["--batch-size", "16", "--learning-rate", "0.02", "--epochs", "1", *SMALL_MODEL]


# ----------------------------------------------------------------- the ratio's draws


def plan_world(seed: int = 1, ratio: float = 0.5) -> UnlabelledPlan:
    labelled = [Sentence(tuple(f"l{i}" for _ in range(1 + i % 4)), tuple("O" for _ in range(1 + i % 4)))
                for i in range(10)]
    unlabelled = [Sentence(tuple(f"u{i}" for _ in range(1 + i % 5)), ()) for i in range(25)]
    sentences = [*labelled, *unlabelled]
    dataset = EncodedDataset(sentences, build_vocabularies({"t": sentences}), "t")
    return UnlabelledPlan("t", dataset, labelled=10, ratio=ratio, batch_size=4, seed=seed)


def epoch_ids(plan: UnlabelledPlan, generator: np.random.Generator) -> list[list[int]]:
    return [batch.sentence_ids.tolist() for _, batch in plan(generator)]


def test_each_epoch_takes_every_labelled_sentence_and_the_next_share_of_the_text():
    plan, generator = plan_world(), np.random.default_rng(0)
    drawn = []
    for _ in range(6):
        ids = sorted(i for batch in epoch_ids(plan, generator) for i in batch)
        assert ids[:10] == list(range(10)) and len(ids) == 15  # ratio 0.5 of 10 labelled: 5 unlabelled
        drawn.append(ids[10:])
    # Five epochs are one pass through the 25 unlabelled sentences, each once; the sixth starts again.
    assert sorted(i for epoch in drawn[:5] for i in epoch) == list(range(10, 35))
    assert drawn[5] == drawn[0]


def test_the_draws_are_deterministic_by_seed_and_a_resumed_plan_goes_on():
    first, second = plan_world(seed=1), plan_world(seed=1)
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    assert [epoch_ids(first, a) for _ in range(3)] == [epoch_ids(second, b) for _ in range(3)]
    assert plan_world(seed=2).drawn(0).tolist() != first.drawn(0).tolist()
    resumed, fresh = plan_world(seed=1), plan_world(seed=1)
    resumed.epoch = 2
    generator = np.random.default_rng(9)
    for _ in range(2):
        epoch_ids(fresh, np.random.default_rng(0))
    assert epoch_ids(resumed, np.random.default_rng(9)) == epoch_ids(fresh, generator)
    assert plan_world(ratio=100).per_epoch == 25  # more than the file: the whole file


def test_the_ratio_is_an_option_of_the_text_and_in_the_models_identity(tmp_path: Path):
    text = tmp_path / "text.txt"
    text.write_text("a b c\n")
    with pytest.raises(FieldError, match="unlabelled_ratio 0.5: applies only with unlabelled text"):
        DistillOptions(cache_run="c", unlabelled_ratio=0.5)
    with pytest.raises(FieldError, match="unlabelled_ratio 0: must be positive"):
        DistillOptions(cache_run="c", unlabelled=str(text), unlabelled_ratio=0)

    def tags(ratio):
        job = TaggerJob(corpora=["A"], distill=DistillOptions(cache_run="c", unlabelled=str(text), unlabelled_ratio=ratio))
        return identity_tags(tagger_definition(job))

    ids = {tags(ratio)["model_id"] for ratio in (None, 0.5, 1.0, 2.0)}
    assert len(ids) == 4
    assert tags(0.5)["model_name"].endswith("-unlabelled0.5") and tags(None)["model_name"].endswith("-unlabelled")


# ----------------------------------------------------------------- finding overlap


def test_overlap_is_found_in_every_format_with_its_line(tmp_path: Path):
    data_dir = make_corpora(tmp_path / "corpora")
    test = read_conll(data_dir / "tiny" / "test.tsv")
    one_per_line = tmp_path / "lines.txt"
    one_per_line.write_text(f"a clean line\n\nanother\n{' '.join(test[4].tokens).upper()}\n{' '.join(test[5].tokens)}\n")
    conll = tmp_path / "text.conll"
    conll.write_text("clean\tO\nline\tO\n\n" + "".join(f"{t}\tO\n" for t in test[4].tokens) + "\n")
    for path, line, count in ((one_per_line, 4, 2), (conll, 4, 1)):
        from kd.data.conll import read_unlabelled

        overlap = find_overlap(path, [s.tokens for s in read_unlabelled(path)], [data_dir / "tiny"])
        assert (overlap.count, overlap.first_line, overlap.where) == (count, line, "tiny/test")
    assert find_overlap(one_per_line, [("a", "clean", "line")], [data_dir / "tiny"]) is None


# ----------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, shared_teachers):
    root = tmp_path_factory.mktemp("guard")
    data_dir = make_corpora(root / "corpora")
    test = read_conll(data_dir / "tiny" / "test.tsv")
    train = read_conll(data_dir / "other" / "train.tsv")
    leaky = root / "leaky.txt"
    leaky.write_text("".join(" ".join(s.tokens) + "\n" for s in [*train[:30], test[7], *train[30:60], test[8]]))
    with shared_teachers.open_copy(root) as uri:
        yield {"root": root, "data_dir": data_dir, "leaky": leaky, "uri": uri, "teacher": shared_teachers.mtm,
               "test": test}


def cache(world, *extra) -> list[str]:
    return ["cache-logits", "--teacher", world["teacher"], "--tasks", "tiny", "--data-dir", world["data_dir"],
            "--splits", "train", "--dtype", "float32", "--json", *extra]


@pytest.mark.slow
def test_the_guard_refuses_evaluation_sentences_and_names_the_command(guarded):
    world, client = guarded, MlflowClient(guarded["uri"])
    before = len(client.search_runs([e.experiment_id for e in client.search_experiments()]))
    leaky = str(world["leaky"])
    lines = world["leaky"].read_text().splitlines()
    first = lines.index(" ".join(world["test"][7].tokens)) + 1
    for command in (cache(world, "--unlabelled", leaky),
                    ["distill", "--task", "tiny", "--data-dir", world["data_dir"], "--teacher", world["teacher"],
                     "--unlabelled", leaky, *TRAINING]):
        message = one_line_error(CliRunner().invoke(cli, [str(a) for a in command]))
        assert f"--unlabelled {world['leaky'].resolve()}: 2 sentences also in a devel or test split" in message
        assert f"the first at line {first} (in tiny/test)" in message
        assert f"`kd data text {world['leaky'].resolve()} --for tiny --out CLEAN.txt`" in message
    assert len(client.search_runs([e.experiment_id for e in client.search_experiments()])) == before


@pytest.mark.slow
def test_allowed_overlap_runs_tagged_and_a_clean_file_runs_with_its_manifest_and_ratio(guarded):
    world, client = guarded, MlflowClient(guarded["uri"])
    leaky = str(world["leaky"])
    allowed = run_kd(*cache(world, "--unlabelled", leaky, "--allow-eval-overlap"))["run_id"]
    assert client.get_run(allowed).data.tags["unlabelled_eval_overlap"] == "2"
    student = run_kd("distill", "--task", "tiny", "--data-dir", world["data_dir"], "--cache", allowed,
                     "--unlabelled", leaky, "--allow-eval-overlap", "true", "--train-splits", "train", *TRAINING, "--json")
    assert client.get_run(student["run_id"]).data.tags["unlabelled_eval_overlap"] == "2"

    clean = world["root"] / "clean.txt"
    result = CliRunner().invoke(cli, ["data", "text", leaky, "--for", "tiny", "--data-dir", str(world["data_dir"]),
                                      "--out", str(clean)])
    assert result.exit_code == 0 and "2 in tiny/test" in result.output, result.output
    cached = run_kd(*cache(world, "--unlabelled", clean))["run_id"]
    runs = [run_kd("distill", "--task", "tiny", "--data-dir", world["data_dir"], "--cache", cached, "--unlabelled",
                   clean, "--unlabelled-ratio", "0.5", "--train-splits", "train", *TRAINING, "--epochs", "2",
                   "--json") for _ in range(2)]
    losses = [[m.value for m in client.get_metric_history(r["run_id"], "train_loss")] for r in runs]
    assert runs[0]["test_f1"] == runs[1]["test_f1"] and losses[0] == losses[1] and len(losses[0]) == 2
    run = client.get_run(runs[0]["run_id"])
    assert run.data.params["unlabelled_ratio"] == "0.5" and "unlabelled_eval_overlap" not in run.data.tags
    assert "-unlabelled0.5-" in run.info.run_name
    for run_id in (cached, runs[0]["run_id"]):
        logged = [a.path for a in client.list_artifacts(run_id, "unlabelled")]
        assert logged == ["unlabelled/clean.txt.manifest.json"]

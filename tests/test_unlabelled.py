"""Students that also learn from sentences without gold tags (`--unlabelled FILE`): the file is read in
any format `kd predict` reads, its sentences carry no tag ids, the hard-label term skips them while the
teacher's terms cover them, a cache holds the teacher's outputs for them, and every way of getting the
file wrong is one line."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mlflow import MlflowClient

from kd.data.batching import NO_TAG, EncodedDataset
from kd.data.conll import read_conll, read_unlabelled
from kd.data.types import Sentence
from kd.data.vocab import build_vocabularies
from kd.errors import DataError
from kd.losses.supervised import hard_label_loss
from kd.models.crf import CRF
from kd.models.tagger import TaggerOutput
from tests.conftest import SMALL_MODEL, make_corpora, one_line_error, run_kd, write_corpus

TRAINING = ["--batch-size", "16", "--learning-rate", "0.02"]


# ----------------------------------------------------------------- reading and encoding


def test_unlabelled_text_is_read_in_every_prediction_format_and_keeps_no_tags(tmp_path: Path):
    conll = tmp_path / "other.tsv"
    conll.write_text("aspirin\tB-Chemical\nhelps\tO\n\n-DOCSTART-\tO\n\nfever\tB-Disease\n")
    lines = tmp_path / "lines.txt"
    lines.write_text("aspirin helps\n\nfever\n")
    for path in (conll, lines):
        sentences = read_unlabelled(path)
        assert [s.tokens for s in sentences] == [("aspirin", "helps"), ("fever",)], path
        assert all(s.tags == () and not s.labelled for s in sentences)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match=f"{empty}: no sentences found"):
        read_unlabelled(empty)
    with pytest.raises(DataError, match="missing.txt: file not found"):
        read_unlabelled(tmp_path / "missing.txt")


def test_an_unlabelled_sentence_has_no_tag_ids_and_a_labelled_one_keeps_its_own():
    labelled = Sentence(("aspirin", "helps"), ("B-Chemical", "O"))
    unlabelled = Sentence(("fever", "and", "aspirin"), ())
    vocabularies = build_vocabularies({"t": [labelled, unlabelled]})
    assert set(vocabularies.tags["t"]) == {"O", "B-Chemical"}  # the unlabelled sentence adds no tag
    dataset = EncodedDataset([labelled, unlabelled], vocabularies, "t")
    batch = dataset.batch(np.array([0, 1]))
    tag_ids = {tag: i for i, tag in enumerate(vocabularies.tags["t"])}
    rows = {int(i): row for i, row in zip(batch.sentence_ids, batch.tags)}
    assert rows[1].tolist() == [NO_TAG] * 3  # the longer, unlabelled sentence
    assert rows[0].tolist() == [tag_ids["B-Chemical"], tag_ids["O"], 0]  # then padding
    assert "fever" in vocabularies.words.index  # its words are training text


# ----------------------------------------------------------------- the hard-label term skips it


def mixed_batch(seed: int = 0):
    """Three sentences (lengths 4, 3, 2); the middle one unlabelled."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 4, 5, generator=generator, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    tags = torch.randint(0, 5, (3, 4), generator=generator) * mask
    tags[1, :3] = NO_TAG
    output = TaggerOutput(logits=logits, task_hidden=torch.zeros(3, 4, 1), shared_hidden=torch.zeros(3, 4, 1), mask=mask)
    return output, tags


def test_softmax_hard_loss_skips_unlabelled_sentences_by_hand():
    output, tags = mixed_batch()
    loss = hard_label_loss(output, tags, None)
    log_p = torch.log_softmax(output.logits.detach(), dim=2)
    by_hand = -sum(log_p[row, position, tags[row, position]] for row, length in ((0, 4), (2, 2))
                   for position in range(length)) / 3  # averaged over all three sentences
    assert torch.allclose(loss, by_hand)
    loss.backward()
    assert torch.count_nonzero(output.logits.grad[1]) == 0
    assert torch.count_nonzero(output.logits.grad[0]) > 0


def test_crf_hard_loss_is_the_labelled_sentences_nll_and_no_gradient_reaches_the_others():
    output, tags = mixed_batch(1)
    crf = CRF(5)
    loss = hard_label_loss(output, tags, crf)
    labelled = torch.tensor([0, 2])
    alone = crf.nll(output.logits[labelled].detach(), tags[labelled], output.mask[labelled]).sum() / 3
    assert torch.allclose(loss, alone)
    loss.backward()
    assert torch.count_nonzero(output.logits.grad[1]) == 0
    every_sentence_labelled = tags.clamp_min(0)
    assert torch.allclose(hard_label_loss(output, every_sentence_labelled, crf),
                          crf.nll(output.logits, every_sentence_labelled, output.mask).sum() / 3)


def test_the_softmax_term_of_fully_labelled_batches_is_unchanged():
    output, tags = mixed_batch(2)
    tags = tags.clamp_min(0)
    expected = F.cross_entropy(output.logits[output.mask], tags[output.mask], reduction="sum") / 3
    assert torch.equal(hard_label_loss(output, tags, None), expected)


# ----------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def unlabelled_world(tmp_path_factory, shared_teachers):
    """The session's multi-task teacher, a cache with `other`'s training sentences as unlabelled text
    (its tags ignored), and a cache without them."""
    root = tmp_path_factory.mktemp("unlabelled")
    data_dir = make_corpora(root / "corpora")
    text = data_dir / "other" / "train.tsv"
    with shared_teachers.open_copy(root) as uri:
        cache = run_kd("cache-logits", "--teacher", shared_teachers.mtm, "--tasks", "tiny", "--data-dir", data_dir,
                       "--splits", "train", "--unlabelled", text, "--dtype", "float32", "--json")["run_id"]
        plain = run_kd("cache-logits", "--teacher", shared_teachers.mtm, "--tasks", "tiny", "--data-dir", data_dir,
                       "--splits", "train", "--dtype", "float32", "--json")["run_id"]
        yield {"root": root, "data_dir": data_dir, "text": text, "uri": uri, "teacher": shared_teachers.mtm,
               "cache": cache, "plain": plain}


def student(world, *extra: str) -> list[str]:
    return ["distill", "--task", "tiny", "--data-dir", world["data_dir"], "--train-splits", "train", "--epochs", "1",
            *TRAINING, *SMALL_MODEL, "--json", *extra]


@pytest.mark.slow
def test_a_student_learns_from_the_cached_unlabelled_sentences(unlabelled_world):
    world = unlabelled_world
    client = MlflowClient(world["uri"])
    cache_run = client.get_run(world["cache"])
    assert cache_run.data.params["unlabelled"] == str(world["text"].resolve())
    sentences = read_conll(world["text"])
    tiny_tokens = sum(len(s) for s in read_conll(world["data_dir"] / "tiny" / "train.tsv"))
    def metrics(*args: str) -> dict:
        run_id = run_kd(*student(world, *args))["run_id"]
        return {"run_id": run_id, **client.get_run(run_id).data.metrics}

    with_text = metrics("--cache", world["cache"], "--unlabelled", world["text"])
    without = metrics("--cache", world["cache"])
    assert with_text["unlabelled_sentences"] == len(sentences)
    assert with_text["unlabelled_tokens"] == sum(len(s) for s in sentences)
    assert with_text["train_tokens"] == tiny_tokens + with_text["unlabelled_tokens"]
    assert without["train_tokens"] == tiny_tokens and "unlabelled_sentences" not in without
    tags = {key: client.get_run(run["run_id"]).data.tags for key, run in (("with", with_text), ("without", without))}
    assert tags["with"]["model_name"].endswith("-unlabelled")
    assert tags["with"]["model_id"] != tags["without"]["model_id"]
    assert client.get_run(with_text["run_id"]).data.params["unlabelled"] == str(world["text"].resolve())
    # The live teacher gives the same student the same targets: the same F1 to float noise.
    live = metrics("--teacher", world["teacher"], "--unlabelled", world["text"])
    assert live["unlabelled_sentences"] == len(sentences)
    assert abs(live["test_f1"] - with_text["test_f1"]) < 0.02


@pytest.mark.slow
def test_kd_tune_trials_learn_from_the_unlabelled_text(unlabelled_world, tmp_path):
    """`kd tune --unlabelled FILE`: every trial's student trains on the text too (its tokens in its
    training tokens); the study is another one (its default name has the text's digest)."""
    world = unlabelled_world
    client = MlflowClient(world["uri"])
    space = tmp_path / "space.yaml"
    space.write_text("fixed: {loss: logits, word_dim: 16, char_dim: 8, char_hidden: 8, shared_hidden: 16, "
                     "task_hidden: 16, hidden_dim: 16, batch_size: 16, epochs: 1}\n"
                     "params:\n  alpha: {type: float, low: 0.0, high: 1.0}\n")
    result = run_kd("tune", "--task", "tiny", "--data-dir", world["data_dir"], "--cache", world["cache"],
                    "--space", space, "--n-trials", "2", "--pruner", "none", "--unlabelled", world["text"],
                    "--storage", tmp_path / "journal.log", "--json")
    assert "-text" in result["study"] and result["finished_trials"] == 2
    parent = client.get_run(result["parent_run_id"])
    trials = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    sentences = read_conll(world["text"])
    tiny_tokens = sum(len(s) for s in read_conll(world["data_dir"] / "tiny" / "train.tsv"))
    assert len(trials) == 2
    for trial in trials:
        assert trial.data.metrics["unlabelled_sentences"] == len(sentences)
        assert trial.data.metrics["train_tokens"] == tiny_tokens + sum(len(s) for s in sentences)
        assert trial.data.params["unlabelled"] == str(world["text"].resolve())
    refused = run_kd_failure("tune", "--task", "tiny", "--data-dir", world["data_dir"], "--cache", world["cache"],
                             "--space", space, "--unlabelled", tmp_path / "missing.txt")
    assert "missing.txt" in refused


def run_kd_failure(*args) -> str:
    from click.testing import CliRunner

    from kd.cli.main import cli

    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    return one_line_error(result)


@pytest.mark.slow
def test_cached_targets_of_unlabelled_sentences_are_the_live_teachers(unlabelled_world):
    from kd.cache.build import open_cache_run
    from kd.cache.knowledge import TeacherKnowledge
    from kd.cache.teachers import load_teacher
    from kd.data.types import UNLABELLED_SPLIT

    world = unlabelled_world
    client = MlflowClient(world["uri"])
    device = torch.device("cpu")
    sentences = [*read_conll(world["data_dir"] / "tiny" / "train.tsv"), *read_unlabelled(world["text"])]
    reader, _ = open_cache_run(world["cache"], client, world["uri"])
    cached = TeacherKnowledge.from_cache(reader, "tiny", world["cache"]).source(
        sentences, ["train", UNLABELLED_SPLIT], ["logits"], device)
    live = TeacherKnowledge.from_teachers([load_teacher(world["teacher"], client, world["uri"], device)], "tiny").source(
        sentences, ["train", UNLABELLED_SPLIT], ["logits"], device)
    vocabularies = build_vocabularies({"tiny": sentences})
    dataset = EncodedDataset(sentences, vocabularies, "tiny")
    last = np.arange(len(sentences) - 20, len(sentences))  # all unlabelled
    batch = dataset.batch(last)
    assert bool((batch.tags[batch.mask] == NO_TAG).all())
    # At real tokens (the losses zero whatever lies at padding).
    assert torch.allclose(cached(batch)["logits"][batch.mask], live(batch)["logits"][batch.mask], atol=1e-5)


@pytest.mark.slow
def test_unlabelled_mistakes_are_one_line_errors(unlabelled_world, tmp_path):
    world = unlabelled_world
    other_text = tmp_path / "other.txt"
    write_corpus(tmp_path / "else", {"train": 15}, seed=9)
    other_text.write_text((tmp_path / "else" / "train.tsv").read_text())
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    cases = [
        (student(world, "--cache", world["plain"], "--unlabelled", world["text"]),
         ["--cache", "no cached unlabelled split", "kd cache-logits --unlabelled FILE"]),
        (student(world, "--cache", world["cache"], "--unlabelled", other_text),
         ["(train, unlabelled)", "the cache was made from other data"]),
        (student(world, "--cache", world["cache"], "--unlabelled", tmp_path / "missing.txt"),
         ["missing.txt: file not found"]),
        (["cache-logits", "--teacher", world["teacher"], "--data-dir", world["data_dir"], "--unlabelled", empty],
         [f"{empty}: no sentences found"]),
    ]
    from click.testing import CliRunner

    from kd.cli.main import cli

    for args, needles in cases:
        message = one_line_error(CliRunner().invoke(cli, [str(a) for a in args]))
        for needle in needles:
            assert needle in message, (args, message)

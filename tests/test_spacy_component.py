"""The `kd_ner` spaCy component (issue 29): found through the `spacy_factories` entry point, it sets
`doc.ents` from a student on the Doc's own tokens, by the Doc's sentences after a sentence splitter.
Truths: the token interface's tags of those tokens (seqeval's IOB2 entities), the raw-text path
where spaCy's tokens are kd's, and the input string."""
from __future__ import annotations

import json
import subprocess
import sys
import tomllib

import pytest
from seqeval.scheme import IOB2, Entities

from kd.models.inference import SavedTagger
from kd.models.raw_text import tag_documents
from tests.conftest import REPO, SMALL_MODEL, run_kd
from tests.test_raw_text import DOCUMENTS, make_model

spacy = pytest.importorskip("spacy")

# Texts whose spaCy tokens (blank English) are kd's tokens, with runs of spaces and a line break.
PLAIN = ["Aspirin induced asthma in two patients. Cisplatin and caffeine were given for cancer syndrome.",
         "The patient showed no signs of diabetes.  Fever and asthma\nwere treated with ibuprofen sulfate."]


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("spacy"), "crf")


def entities_of(doc) -> list[tuple[int, int, str, str]]:
    return [(e.start_char, e.end_char, e.label_, e.text) for e in doc.ents]


def test_blank_english_gives_the_raw_text_paths_entities(model_folder):
    import kd.tracking.spacy_pipe  # noqa: F401  the factory (the entry point is tested below)

    nlp = spacy.blank("en")
    nlp.add_pipe("kd_ner", config={"model": str(model_folder)})
    tagger = SavedTagger(model_folder)
    docs = list(nlp.pipe(PLAIN, batch_size=1))
    expected = tag_documents(tagger, PLAIN)
    assert sum(len(doc.ents) for doc in docs) >= 3
    for text, doc, entities in zip(PLAIN, docs, expected):
        assert entities_of(doc) == [(e.start, e.end, e.label, e.text) for e in entities]
        assert all(text[start:end] == span for start, end, _, span in entities_of(doc))
        assert doc.spans["kd_ner"].attrs["scores"] == pytest.approx([e.score for e in entities])
        assert [s.text for s in doc.spans["kd_ner"]] == [e.text for e in entities]
    assert [entities_of(d) for d in nlp.pipe(PLAIN, batch_size=8)] == [entities_of(d) for d in docs]


def test_after_a_sentence_splitter_it_tags_the_docs_sentences(model_folder):
    import kd.tracking.spacy_pipe  # noqa: F401

    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    nlp.add_pipe("kd_ner", config={"model": str(model_folder)})
    tagger = SavedTagger(model_folder)
    found = 0
    for text in DOCUMENTS + PLAIN:
        doc = nlp(text)
        sentences = [[token for token in sentence if not token.is_space] for sentence in doc.sents]
        tags = tagger.tag([[token.text for token in sentence] for sentence in sentences])
        expected = [(sentence[e.start].idx, sentence[e.end - 1].idx + len(sentence[e.end - 1]), e.tag)
                    for sentence, sentence_tags in zip(sentences, tags)
                    for e in Entities([sentence_tags], IOB2).entities[0]]
        assert [(s, e, label) for s, e, label, _ in entities_of(doc)] == expected
        assert all(text[s:e] == span for s, e, _, span in entities_of(doc))
        found += len(doc.ents)
    assert found >= 5


def declared_entry_point() -> str:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    return project["project"]["entry-points"]["spacy_factories"]["kd_ner"]


def test_spacy_finds_the_component_through_the_entry_point(model_folder, tmp_path):
    """A fresh interpreter where kd is importable but never imported by hand; the entry point is the
    one pyproject.toml declares, put in a distribution's metadata as an install would."""
    info = tmp_path / "site" / "kd_entry_points_probe-0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kd-entry-points-probe\nVersion: 0\n")
    (info / "entry_points.txt").write_text(f"[spacy_factories]\nkd_ner = {declared_entry_point()}\n")
    script = ("import json, sys, spacy\nassert 'kd' not in sys.modules\nnlp = spacy.blank('en')\n"
              f"nlp.add_pipe('kd_ner', config={{'model': {str(model_folder)!r}}})\n"
              f"print(json.dumps([[(e.start_char, e.end_char, e.label_) for e in nlp(t).ents] for t in {PLAIN!r}]))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={"PYTHONPATH": f"{tmp_path / 'site'}:{REPO}", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    expected = [[[e.start, e.end, e.label] for e in found] for found in tag_documents(SavedTagger(model_folder), PLAIN)]
    assert json.loads(result.stdout) == expected


def test_a_missing_model_is_one_line(tmp_path):
    import kd.tracking.spacy_pipe  # noqa: F401
    from kd.errors import KdError

    nlp = spacy.blank("en")
    with pytest.raises(KdError, match="required"):
        nlp.add_pipe("kd_ner")
    with pytest.raises(KdError, match="nowhere"):
        nlp.add_pipe("kd_ner", config={"model": str(tmp_path / "nowhere")})


@pytest.mark.slow
def test_a_runs_uri_loads_the_logged_student(data_dir, tracking):
    import kd.tracking.spacy_pipe  # noqa: F401
    from kd.tracking.logged_models import load_logged_tagger

    run_id = run_kd("train", "--task", data_dir / "tiny", "--epochs", "10", *SMALL_MODEL, "--batch-size", "16",
                    "--learning-rate", "0.02", "--json")["run_id"]
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    nlp.add_pipe("kd_ner", config={"model": f"runs:/{run_id}/model", "tracking_uri": tracking})
    docs = list(nlp.pipe(PLAIN))
    expected = tag_documents(SavedTagger(load_logged_tagger(run_id, tracking)), PLAIN)
    assert [entities_of(doc) for doc in docs] == [[(e.start, e.end, e.label, e.text) for e in x] for x in expected]
    assert ("aspirin", "Chemical") in {(e.text.lower(), e.label_) for doc in docs for e in doc.ents}

"""save_model / load_model: exact round trips, safe loading and atomic saving."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from kd.data.batching import EncodedDataset
from kd.data.types import Sentence
from kd.data.vocab import build_vocabularies
from kd.errors import KdError
from kd.models.io import find_model_directory, load_model, save_model
from kd.models.tagger import Tagger, TaggerConfig

SIZES = dict(word_dim=6, char_dim=4, char_hidden=3, shared_hidden=5, task_hidden=4, hidden_dim=7, dropout=0.5)
GENES = [
    Sentence(("IL-2", "binds", "p53", "."), ("B-Gene", "O", "B-Gene", "O")),
    Sentence(("tumour", "necrosis", "factor"), ("B-Gene", "I-Gene", "I-Gene")),
    Sentence(("p53",), ("B-Gene",)),
]
CHEMS = [Sentence(("aspirin", "and", "Na+", "é"), ("B-Chem", "O", "B-Chem", "O"))]

CALLS: list[str] = []


def record_call(what: str) -> None:
    CALLS.append(what)


class Payload:
    """Unpickling this would run `record_call`: weights-only loading must refuse it."""

    def __reduce__(self):
        return (record_call, ("unpickled",))


def make(output: str = "softmax", seed: int = 0):
    vocabularies = build_vocabularies({"BC2GM": GENES, "BC5CDR.chem": CHEMS})
    torch.manual_seed(seed)
    config = TaggerConfig(tasks={t: len(v) for t, v in vocabularies.tags.items()}, num_words=len(vocabularies.words),
                          num_chars=len(vocabularies.chars), output=output, extra={"note": "ünïcode"}, **SIZES)
    return Tagger(config), vocabularies


def batch(vocabularies):
    return EncodedDataset(GENES + [Sentence(("unseen", "words"), ("O", "O"))], vocabularies, "BC2GM").batch(np.arange(4))


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("output", ["softmax", "crf"])
def test_round_trip_gives_identical_weights_and_predictions(tmp_path, output):
    model, vocabularies = make(output)
    model.eval()
    target = save_model(model, vocabularies, tmp_path / "model")
    assert Path(target) == tmp_path / "model"
    assert sorted(os.listdir(target)) == ["tagger.json", "weights.pt"]
    assert sorted(os.listdir(tmp_path)) == ["model"]  # no staging folders left behind

    saved = load_model(tmp_path / "model")
    assert not saved.model.training
    assert saved.model.config == model.config
    assert saved.model.task_names == model.task_names
    assert_same_state(model, saved.model)
    assert saved.vocabularies.words.items == vocabularies.words.items
    assert saved.vocabularies.chars.items == vocabularies.chars.items
    assert saved.vocabularies.tags == vocabularies.tags

    b = batch(saved.vocabularies)
    with torch.no_grad():
        for task in model.task_names:
            expected, got = model(b, task), saved.model(b, task)
            assert torch.equal(expected.logits, got.logits)
            assert torch.equal(model.decode(expected, task), saved.model.decode(got, task))


def test_tagger_json_describes_the_model(tmp_path):
    model, vocabularies = make()
    save_model(model, vocabularies, tmp_path / "m")
    description = json.loads((tmp_path / "m" / "tagger.json").read_text())
    assert description["format_version"] == 1
    assert TaggerConfig.from_json(description["config"]) == model.config
    assert description["vocabularies"]["tags"] == vocabularies.tags


def test_weights_are_a_plain_state_dict(tmp_path):
    model, vocabularies = make()
    save_model(model, vocabularies, tmp_path / "m")
    state = torch.load(tmp_path / "m" / "weights.pt", weights_only=True)
    assert set(state) == set(model.state_dict())


def test_pickled_code_in_weights_is_never_run(tmp_path):
    model, vocabularies = make()
    save_model(model, vocabularies, tmp_path / "m")
    state = model.state_dict()
    state["payload"] = Payload()
    torch.save(state, tmp_path / "m" / "weights.pt")
    CALLS.clear()
    with pytest.raises(Exception):
        load_model(tmp_path / "m")
    assert CALLS == []
    # the same file does run the payload when loaded without weights_only (the test is meaningful)
    torch.load(tmp_path / "m" / "weights.pt", weights_only=False)
    assert CALLS == ["unpickled"]
    CALLS.clear()


def test_wrong_format_version_is_a_kd_error(tmp_path):
    model, vocabularies = make()
    save_model(model, vocabularies, tmp_path / "m")
    path = tmp_path / "m" / "tagger.json"
    description = json.loads(path.read_text())
    for version in (2, 0, None, "1"):
        description["format_version"] = version
        path.write_text(json.dumps(description))
        with pytest.raises(KdError):
            load_model(tmp_path / "m")
    del description["format_version"]
    path.write_text(json.dumps(description))
    with pytest.raises(KdError):
        load_model(tmp_path / "m")


def test_unreadable_description_and_missing_model_are_kd_errors(tmp_path):
    model, vocabularies = make()
    save_model(model, vocabularies, tmp_path / "m")
    (tmp_path / "m" / "tagger.json").write_text("{not json")
    with pytest.raises(KdError):
        load_model(tmp_path / "m")
    (tmp_path / "empty").mkdir()
    with pytest.raises(KdError):
        load_model(tmp_path / "empty")


def test_model_found_in_a_subfolder(tmp_path):
    model, vocabularies = make()
    save_model(model, vocabularies, tmp_path / "run" / "artifacts" / "model")
    assert find_model_directory(tmp_path / "run") == tmp_path / "run" / "artifacts" / "model"
    assert_same_state(model, load_model(tmp_path / "run").model)


def test_overwriting_replaces_the_previous_model(tmp_path):
    first, vocabularies = make(seed=0)
    second, _ = make(seed=1)
    save_model(first, vocabularies, tmp_path / "m")
    save_model(second, vocabularies, tmp_path / "m")
    assert sorted(os.listdir(tmp_path / "m")) == ["tagger.json", "weights.pt"]
    assert sorted(os.listdir(tmp_path)) == ["m"]
    assert_same_state(second, load_model(tmp_path / "m").model)


class Boom(RuntimeError):
    pass


def failing_save(obj, f, *args, **kwargs):
    """Writes part of the file, then fails, as a full disk or an interrupt would."""
    Path(f).write_bytes(b"partial")
    raise Boom("disk full")


def test_failed_save_leaves_no_target(tmp_path, monkeypatch):
    model, vocabularies = make()
    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(Boom):
        save_model(model, vocabularies, tmp_path / "m")
    assert os.listdir(tmp_path) == []


def test_failed_save_keeps_the_previous_model(tmp_path, monkeypatch):
    first, vocabularies = make(seed=0)
    second, _ = make(seed=1)
    save_model(first, vocabularies, tmp_path / "m")
    before = {name: (tmp_path / "m" / name).read_bytes() for name in os.listdir(tmp_path / "m")}
    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(Boom):
        save_model(second, vocabularies, tmp_path / "m")
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["m"]
    assert {name: (tmp_path / "m" / name).read_bytes() for name in os.listdir(tmp_path / "m")} == before
    assert_same_state(first, load_model(tmp_path / "m").model)

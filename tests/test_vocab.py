"""Vocabulary tests: reserved ids, lookups, JSON round trips and deterministic tag order."""
from __future__ import annotations

import json

from kd.data.types import Sentence
from kd.data.vocab import PAD, UNK, Vocabularies, Vocabulary, build_vocabularies, tag_list

GENES = [
    Sentence(("IL-2", "binds", "p53"), ("B-Gene", "O", "B-Gene")),
    Sentence(("tumour", "necrosis", "factor"), ("B-Gene", "I-Gene", "I-Gene")),
]
CHEMS = [
    Sentence(("aspirin", "binds", "Na+"), ("B-Chem", "O", "B-Chem")),
    Sentence(("sodium", "chloride", "levels"), ("B-Chem", "I-Chem", "O")),
    Sentence(("breast", "cancer"), ("B-Disease", "I-Disease")),
]


def test_reserved_ids_and_lookup():
    vocabulary = Vocabulary(["b", "a", "b", "c", "a"])
    assert vocabulary.lookup(PAD) == 0
    assert vocabulary.lookup(UNK) == 1
    assert vocabulary.items == [PAD, UNK, "b", "a", "c"]
    assert len(vocabulary) == 5
    assert [vocabulary.lookup(x) for x in "bac"] == [2, 3, 4]
    assert vocabulary.lookup("never seen") == 1
    assert "a" in vocabulary and "z" not in vocabulary
    assert vocabulary.to_list() == ["b", "a", "c"]


def test_reserved_strings_in_data_do_not_move_ids():
    vocabulary = Vocabulary(["x", PAD, UNK, "y"])
    assert vocabulary.items == [PAD, UNK, "x", "y"]
    assert Vocabulary.from_list(vocabulary.to_list()).items == vocabulary.items


def test_empty_vocabulary():
    vocabulary = Vocabulary([])
    assert len(vocabulary) == 2
    assert vocabulary.lookup("anything") == 1


def test_build_vocabularies_first_seen_order_across_tasks():
    vocabularies = build_vocabularies({"genes": GENES, "chems": CHEMS})
    assert vocabularies.words.to_list() == ["IL-2", "binds", "p53", "tumour", "necrosis", "factor",
                                            "aspirin", "Na+", "sodium", "chloride", "levels", "breast", "cancer"]
    expected_chars = []
    for sentences in (GENES, CHEMS):
        for s in sentences:
            for token in s.tokens:
                for ch in token:
                    if ch not in expected_chars:
                        expected_chars.append(ch)
    assert vocabularies.chars.to_list() == expected_chars
    assert list(vocabularies.tags) == ["genes", "chems"]
    assert vocabularies.tags["genes"] == ["O", "B-Gene", "I-Gene"]
    assert vocabularies.tags["chems"] == ["O", "B-Chem", "I-Chem", "B-Disease", "I-Disease"]


def test_json_round_trip_gives_identical_lookups():
    vocabularies = build_vocabularies({"genes": GENES, "chems": CHEMS})
    restored = Vocabularies.from_json(json.loads(json.dumps(vocabularies.to_json())))
    probes = vocabularies.words.items + ["unseen", "", PAD, UNK]
    assert [restored.words.lookup(w) for w in probes] == [vocabularies.words.lookup(w) for w in probes]
    char_probes = vocabularies.chars.items + ["é", "Ω"]
    assert [restored.chars.lookup(c) for c in char_probes] == [vocabularies.chars.lookup(c) for c in char_probes]
    assert restored.words.items == vocabularies.words.items
    assert restored.chars.items == vocabularies.chars.items
    assert restored.tags == vocabularies.tags
    assert list(restored.tags) == list(vocabularies.tags)


def test_tag_order_is_deterministic_with_o_first():
    sentences = GENES + CHEMS
    expected = ["O", "B-Chem", "I-Chem", "B-Disease", "I-Disease", "B-Gene", "I-Gene"]
    assert tag_list(sentences) == expected
    assert tag_list(list(reversed(sentences))) == expected
    assert tag_list(sentences[2:] + sentences[:2]) == expected
    # O is present even when no sentence has it
    assert tag_list([Sentence(("a",), ("I-X",)), Sentence(("b",), ("B-X",))]) == ["O", "B-X", "I-X"]
    assert tag_list([]) == ["O"]


def test_tag_order_does_not_depend_on_sentence_order_in_build():
    a = build_vocabularies({"t": GENES + CHEMS})
    b = build_vocabularies({"t": list(reversed(GENES + CHEMS))})
    assert a.tags == b.tags
    assert a.tags["t"][0] == "O"

"""Batching tests: every tensor of a batch is checked against the original sentences."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kd.data.batching import Batch, EncodedDataset, bucketed_batches, token_budget_batches
from kd.data.types import Sentence
from kd.data.vocab import build_vocabularies

TRAIN = [
    Sentence(("IL-2", "binds", "p53", "."), ("B-Gene", "O", "B-Gene", "O")),
    Sentence(("aspirin", "and", "IL-2"), ("B-Chem", "O", "B-Gene")),
    Sentence(("tumour", "necrosis", "factor", "alpha", "rises"), ("B-Gene", "I-Gene", "I-Gene", "I-Gene", "O")),
]
# Evaluation sentences: unknown words ("ZZZ", "binding"), unknown characters ("é", "Ω"),
# repeated forms within and across sentences, an unseen tag, and a one-token sentence.
DATA = [
    Sentence(("p53",), ("B-Gene",)),
    Sentence(("IL-2", "binds", "IL-2", "ZZZ", "binding", "."), ("B-Gene", "O", "B-Gene", "O", "O", "O")),
    Sentence(("aspirin", "caféΩ"), ("B-Chem", "B-Disease")),
    Sentence(("and", "p53", "and"), ("O", "B-Gene", "O")),
    Sentence(("tumour", "necrosis", "factor", "alpha", "ZZZ", "."), ("B-Gene", "I-Gene", "I-Gene", "I-Gene", "O", "O")),
]


@pytest.fixture()
def vocabularies():
    return build_vocabularies({"genes": TRAIN})


@pytest.fixture()
def dataset(vocabularies):
    return EncodedDataset(DATA, vocabularies, "genes")


def check_batch(batch: Batch, dataset: EncodedDataset, vocabularies, requested) -> None:
    words, chars = vocabularies.words, vocabularies.chars
    tags = vocabularies.tags["genes"]
    ids = batch.sentence_ids.tolist()
    assert sorted(ids) == sorted(int(i) for i in requested)
    sentences = [DATA[i] for i in ids]
    lengths = [len(s) for s in sentences]
    size, width = len(ids), max(lengths)

    assert batch.lengths.tolist() == lengths
    assert lengths == sorted(lengths, reverse=True)
    for name in ("words", "form_index", "mask", "tags"):
        assert getattr(batch, name).shape == (size, width), name
    expected_mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    assert torch.equal(batch.mask, expected_mask)
    assert batch.num_tokens == sum(lengths)

    # form rows: every distinct token of the batch exactly once
    forms_of_row: dict[int, set[str]] = {}
    for b, sentence in enumerate(sentences):
        for t, token in enumerate(sentence.tokens):
            unknown_id = 1
            expected_word = words.index[token] if token in words else unknown_id
            assert batch.words[b, t].item() == expected_word
            expected_tag = tags.index(sentence.tags[t]) if sentence.tags[t] in tags else 0
            assert batch.tags[b, t].item() == expected_tag
            row = batch.form_index[b, t].item()
            forms_of_row.setdefault(row, set()).add(token)
            length = batch.form_lengths[row].item()
            assert length == len(token)
            spelled = batch.form_chars[row, :length].tolist()
            assert spelled == [chars.index[c] if c in chars else 1 for c in token]
            assert torch.all(batch.form_chars[row, length:] == 0)
            decoded = "".join(chars.items[i] if i != 1 else "?" for i in spelled)
            assert decoded == "".join(c if c in chars else "?" for c in token)
        assert torch.all(batch.words[b, len(sentence):] == 0)
        assert torch.all(batch.tags[b, len(sentence):] == 0)
    distinct = {token for s in sentences for token in s.tokens}
    assert batch.form_chars.shape[0] == len(distinct)
    assert batch.form_lengths.shape == (len(distinct),)
    assert batch.form_chars.shape[1] == max(len(f) for f in distinct)
    assert set(forms_of_row) == set(range(len(distinct)))
    assert all(len(forms) == 1 for forms in forms_of_row.values())
    # shortest form first, so the character BiLSTM's length groups are slices
    assert (batch.form_lengths[1:] >= batch.form_lengths[:-1]).all()


@pytest.mark.parametrize("requested", [[0, 1, 2, 3, 4], [4, 0, 2], [3], [1, 4], [0, 3, 2]])
def test_batch_matches_sentences(dataset, vocabularies, requested):
    batch = dataset.batch(np.array(requested))
    check_batch(batch, dataset, vocabularies, requested)


def test_dtypes_and_devices(dataset):
    batch = dataset.batch(np.arange(len(DATA)))
    for name in ("words", "form_index", "form_chars", "form_lengths", "lengths", "tags", "sentence_ids"):
        assert getattr(batch, name).dtype == torch.int64, name
    assert batch.mask.dtype == torch.bool
    moved = batch.to("cpu")
    for name in ("words", "form_index", "form_chars", "form_lengths", "lengths", "mask", "tags", "sentence_ids"):
        assert torch.equal(getattr(moved, name), getattr(batch, name)), name


def test_unknown_words_and_chars_map_to_unk(dataset, vocabularies):
    batch = dataset.batch(np.array([1, 2]))
    row_of = {sid: row for row, sid in enumerate(batch.sentence_ids.tolist())}
    # "ZZZ" and "binding" were never seen in training
    assert batch.words[row_of[1], 3].item() == 1
    assert batch.words[row_of[1], 4].item() == 1
    # "caféΩ": unseen word; "é" and "Ω" unseen characters, "c", "a", "f" seen
    assert batch.words[row_of[2], 1].item() == 1
    form = batch.form_chars[batch.form_index[row_of[2], 1]].tolist()
    chars = vocabularies.chars
    assert form[:5] == [chars.index["c"], chars.index["a"], chars.index["f"], 1, 1]


def test_unseen_tag_maps_to_o(dataset, vocabularies):
    assert vocabularies.tags["genes"][0] == "O"
    batch = dataset.batch(np.array([2]))
    assert batch.tags[0].tolist() == [vocabularies.tags["genes"].index("B-Chem"), 0]


def test_without_tags(vocabularies):
    assert EncodedDataset(DATA, vocabularies, "genes", with_tags=False).batch(np.arange(5)).tags is None
    assert EncodedDataset(DATA, vocabularies, None).batch(np.arange(5)).tags is None


def test_dataset_sizes(dataset):
    assert len(dataset) == len(DATA)
    assert dataset.num_tokens == sum(len(s) for s in DATA)
    assert dataset.lengths.tolist() == [len(s) for s in DATA]


def test_shuffled_batches_cover_dataset(dataset, vocabularies):
    seen = []
    for batch in map(dataset.batch, bucketed_batches(dataset.lengths, 2, np.random.default_rng(0))):
        check_batch(batch, dataset, vocabularies, batch.sentence_ids.tolist())
        seen.extend(batch.sentence_ids.tolist())
    assert sorted(seen) == list(range(len(DATA)))


# ------------------------------------------------------------ bucketed_batches


def skewed_lengths(n: int = 600, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.minimum(1 + rng.geometric(0.04, size=n), 150).astype(np.int64)


@pytest.mark.parametrize("rng_seed", [None, 0, 1])
@pytest.mark.parametrize("batch_size", [1, 7, 32, 1000])
def test_every_sentence_once_and_batch_sizes(rng_seed, batch_size):
    lengths = skewed_lengths(203)
    rng = None if rng_seed is None else np.random.default_rng(rng_seed)
    batches = bucketed_batches(lengths, batch_size, rng, max_tokens=10**9)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    assert all(1 <= len(b) <= batch_size for b in batches)
    assert len(batches) == -(-len(lengths) // batch_size)


@pytest.mark.parametrize("rng_seed", [None, 0])
@pytest.mark.parametrize("max_tokens", [1, 150, 400, 5000])
def test_batches_stay_under_the_token_budget_and_a_huge_sentence_goes_alone(rng_seed, max_tokens):
    lengths = np.append(skewed_lengths(203), 200_000)
    rng = None if rng_seed is None else np.random.default_rng(rng_seed)
    batches = bucketed_batches(lengths, 32, rng, max_tokens=max_tokens)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    for batch in batches:
        padded = len(batch) * int(lengths[batch].max())
        assert len(batch) <= 32 and (padded <= max_tokens or len(batch) == 1)
    assert [len(b) for b in batches if len(lengths) - 1 in b] == [1]
    # Brute force: with the budget the batches are the unbudgeted ones, each cut as little as possible.
    unbudgeted = bucketed_batches(lengths, 32, None if rng_seed is None else np.random.default_rng(rng_seed),
                                  max_tokens=10**9)
    fewest = 0
    for batch in unbudgeted:
        rows, longest = 0, 0
        for length in sorted(lengths[batch]):
            if rows and (rows + 1) * max(longest, length) > max_tokens:
                fewest, rows, longest = fewest + 1, 0, 0
            rows, longest = rows + 1, max(longest, int(length))
        fewest += 1
    assert len(batches) == fewest


def test_the_budget_leaves_the_corpora_batches_alone():
    # A batch of 32 sentences of the corpora's longest length (426 tokens, CRAFT) is within the default
    # budget: ordinary training draws exactly the batches it drew before the budget existed.
    lengths = np.full(64, 426)
    assert [len(b) for b in bucketed_batches(lengths, 32, np.random.default_rng(0))] == [32, 32]


def test_same_seed_same_batches_different_seed_different_order():
    lengths = skewed_lengths()
    a = bucketed_batches(lengths, 16, np.random.default_rng(42))
    b = bucketed_batches(lengths, 16, np.random.default_rng(42))
    c = bucketed_batches(lengths, 16, np.random.default_rng(43))
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
    assert [x.tolist() for x in a] != [x.tolist() for x in c]


def test_equal_lengths_are_shuffled_between_epochs():
    lengths = np.full(64, 5, dtype=np.int64)
    a = {frozenset(b.tolist()) for b in bucketed_batches(lengths, 8, np.random.default_rng(0))}
    b = {frozenset(b.tolist()) for b in bucketed_batches(lengths, 8, np.random.default_rng(1))}
    assert a != b


def test_without_rng_fixed_and_sorted_by_length():
    lengths = skewed_lengths()
    a = bucketed_batches(lengths, 16, None)
    b = bucketed_batches(lengths, 16, None)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    flat_lengths = lengths[np.concatenate(a)]
    assert np.all(np.diff(flat_lengths) >= 0)


@pytest.mark.parametrize("rng_seed", [None, 0])
def test_batches_group_similar_lengths(rng_seed):
    lengths = skewed_lengths()
    rng = None if rng_seed is None else np.random.default_rng(rng_seed)
    batches = bucketed_batches(lengths, 16, rng)
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
    permutation = np.random.default_rng(123).permutation(len(lengths))
    random_batches = [permutation[i: i + 16] for i in range(0, len(lengths), 16)]
    random_spread = np.mean([lengths[b].max() - lengths[b].min() for b in random_batches])
    assert random_spread > 40
    assert spread < random_spread / 10
    # padding: tokens in padded batches vs real tokens
    padded = sum(len(b) * lengths[b].max() for b in batches)
    assert padded < 1.1 * lengths.sum()


def test_batch_size_must_be_positive():
    with pytest.raises(ValueError):
        bucketed_batches(np.array([1, 2, 3]), 0, None)


# ------------------------------------------------------------ token_budget_batches
@pytest.mark.parametrize("budget", [1, 5, 40, 1000])
def test_token_budget_batches_cover_sorted_and_fit(budget):
    lengths = np.random.default_rng(3).integers(1, 30, size=200)
    batches = token_budget_batches(lengths, budget)
    order = np.concatenate(batches)
    assert sorted(order.tolist()) == list(range(len(lengths)))
    assert (np.diff(lengths[order]) >= 0).all()  # sorted by length across the whole sequence
    for batch in batches:
        padded = len(batch) * lengths[batch].max()
        assert padded <= budget or len(batch) == 1  # a sentence longer than the budget goes alone
    # Greedy and maximal: the next sentence would not have fitted into the batch before it.
    for before, after in zip(batches, batches[1:]):
        assert (len(before) + 1) * lengths[after[0]] > budget


def test_token_budget_batches_edge_cases():
    assert token_budget_batches(np.array([], dtype=np.int64), 10) == []
    assert [b.tolist() for b in token_budget_batches(np.array([4, 4, 4]), 8)] == [[0, 1], [2]]
    with pytest.raises(ValueError):
        token_budget_batches(np.array([1]), 0)

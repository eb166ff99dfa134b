"""Turns sentences into index arrays once, and index arrays into padded tensor batches.

Batches group sentences of similar length (little padding) and list each distinct word form of
the batch once for the character BiLSTM, which then runs once per form instead of once per
token.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

from kd.data.types import Sentence
from kd.data.vocab import Vocabularies

# The tag id of every token of an unlabelled sentence: the hard-label loss skips it (padding is 0,
# masked out by `mask`).
NO_TAG = -1


@dataclass
class Batch:
    """Padded tensors for one batch. Rows are ordered by decreasing length so packed
    sequences need no re-sorting; `sentence_ids` says which dataset sentence each row is."""

    words: torch.Tensor  # (B, T) word ids
    form_index: torch.Tensor  # (B, T) row of each token in form_chars
    form_chars: torch.Tensor  # (U, L) character ids of the distinct forms in the batch, shortest first
    form_lengths: torch.Tensor  # (U,) on CPU, non-decreasing
    form_ids: torch.Tensor  # (U,) the dataset's id of each form (row of EncodedDataset.form_chars)
    lengths: torch.Tensor  # (B,) on CPU, decreasing
    mask: torch.Tensor  # (B, T) bool
    tags: torch.Tensor | None  # (B, T) tag ids, 0 at padding, NO_TAG throughout an unlabelled sentence
    sentence_ids: torch.Tensor  # (B,) index into the dataset

    @property
    def num_tokens(self) -> int:
        return int(self.lengths.sum())

    def to(self, device: torch.device | str) -> "Batch":
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            keep_on_cpu = f.name in ("form_lengths", "lengths", "sentence_ids")
            moved[f.name] = value if value is None or keep_on_cpu else value.to(device, non_blocking=True)
        return Batch(**moved)


class EncodedDataset:
    """A list of sentences as flat index arrays with per-sentence offsets."""

    def __init__(self, sentences: Sequence[Sentence], vocabularies: Vocabularies, task: str | None,
                 with_tags: bool = True) -> None:
        self.sentences = list(sentences)
        words, chars = vocabularies.words, vocabularies.chars
        self.lengths = np.fromiter((len(s) for s in self.sentences), dtype=np.int64, count=len(self.sentences))
        self.offsets = np.zeros(len(self.sentences) + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=self.offsets[1:])

        form_of: dict[str, int] = {}
        flat_forms = np.empty(int(self.offsets[-1]), dtype=np.int64)
        position = 0
        for sentence in self.sentences:
            for token in sentence.tokens:
                flat_forms[position] = form_of.setdefault(token, len(form_of))
                position += 1
        forms = list(form_of)
        self.flat_forms = flat_forms
        self.form_word_ids = np.fromiter((words.lookup(f) for f in forms), dtype=np.int64, count=len(forms))
        self.flat_words = self.form_word_ids[flat_forms]
        self.form_lengths = np.fromiter((len(f) for f in forms), dtype=np.int64, count=len(forms))
        self.form_chars = np.zeros((len(forms), int(self.form_lengths.max(initial=1))), dtype=np.int64)
        for row, form in enumerate(forms):
            self.form_chars[row, : len(form)] = [chars.lookup(c) for c in form]

        self.flat_tags: np.ndarray | None = None
        if with_tags and task is not None:
            tag_index = {tag: i for i, tag in enumerate(vocabularies.tags[task])}
            # Tags never seen in training (possible only in evaluation splits) map to O (index 0);
            # evaluation scores the gold strings, never these ids.
            self.flat_tags = np.fromiter(
                (tag_index.get(tag, 0) if s.labelled else NO_TAG
                 for s in self.sentences for tag in (s.tags if s.labelled else s.tokens)),
                dtype=np.int64, count=int(self.offsets[-1]))

    def __len__(self) -> int:
        return len(self.sentences)

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    def batch(self, sentence_ids: np.ndarray) -> Batch:
        """Builds the padded batch for the given sentences (any order; rows come out longest first)."""
        sentence_ids = np.asarray(sentence_ids, dtype=np.int64)
        order = np.argsort(-self.lengths[sentence_ids], kind="stable")
        sentence_ids = sentence_ids[order]
        lengths = self.lengths[sentence_ids]
        size, width = len(sentence_ids), int(lengths.max())
        total = int(lengths.sum())
        rows = np.repeat(np.arange(size), lengths)
        cols = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        source = np.repeat(self.offsets[sentence_ids], lengths) + cols

        unique_forms, form_rows = np.unique(self.flat_forms[source], return_inverse=True)
        # Shortest form first: the character BiLSTM then runs on contiguous groups of similar length.
        by_length = np.argsort(self.form_lengths[unique_forms], kind="stable")
        unique_forms = unique_forms[by_length]
        form_rows = np.argsort(by_length)[form_rows.reshape(-1)]
        form_lengths = self.form_lengths[unique_forms]
        form_chars = self.form_chars[unique_forms, : int(form_lengths.max())]

        words = np.zeros((size, width), dtype=np.int64)
        words[rows, cols] = self.flat_words[source]
        form_index = np.zeros((size, width), dtype=np.int64)
        form_index[rows, cols] = form_rows
        mask = np.zeros((size, width), dtype=bool)
        mask[rows, cols] = True
        tags = None
        if self.flat_tags is not None:
            tags_array = np.zeros((size, width), dtype=np.int64)
            tags_array[rows, cols] = self.flat_tags[source]
            tags = torch.from_numpy(tags_array)
        return Batch(
            words=torch.from_numpy(words),
            form_index=torch.from_numpy(form_index),
            form_chars=torch.from_numpy(np.ascontiguousarray(form_chars)),
            form_lengths=torch.from_numpy(form_lengths),
            form_ids=torch.from_numpy(unique_forms),
            lengths=torch.from_numpy(lengths),
            mask=torch.from_numpy(mask),
            tags=tags,
            sentence_ids=torch.from_numpy(sentence_ids),
        )


# The most padded tokens (sentences x longest sentence) of a training or caching batch. The corpora's
# batches stay under it (32 sentences of at most 426 tokens: 13,632), so it changes no ordinary
# training; it stops one huge sentence from being padded into every row of its batch: a 200,000-token
# line among 255 normal sentences made a 256 x 200,000 batch (2.4 GB asked for in kd cache-logits,
# 19 GB in kd distill).
BATCH_TOKEN_BUDGET = 16384


def bucketed_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator | None,
                     max_tokens: int = BATCH_TOKEN_BUDGET) -> list[np.ndarray]:
    """Groups sentence indices of similar length into batches of at most `batch_size` sentences and
    `max_tokens` padded tokens (a sentence longer than that goes alone).

    With an `rng`, sentences of equal length are shuffled before grouping and the batch order is
    shuffled, so each epoch sees new batches; the result depends only on the generator's state,
    which makes it reproducible for a seed. Without one, the order is fixed (evaluation).
    """
    if batch_size < 1:
        raise ValueError("batch size must be at least 1")
    if rng is None:
        order = np.argsort(lengths, kind="stable")
    else:
        order = np.lexsort((rng.random(len(lengths)), lengths))
    batches = [piece for i in range(0, len(order), batch_size)
               for piece in _within_budget(order[i: i + batch_size], lengths, max_tokens)]
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def _within_budget(batch: np.ndarray, lengths: np.ndarray, max_tokens: int) -> list[np.ndarray]:
    """The batch (sorted by length, ascending), cut where its padded size would pass `max_tokens`."""
    if len(batch) * int(lengths[batch[-1]]) <= max_tokens:
        return [batch]
    return [batch[piece] for piece in token_budget_batches(lengths[batch], max_tokens)]


def token_budget_batches(lengths: np.ndarray, max_tokens: int) -> list[np.ndarray]:
    """Sentences sorted by length, cut into batches whose padded size (sentences x longest
    length) stays within `max_tokens`; a sentence longer than the budget gets a batch of its own.

    For inference: short sentences travel in large batches, long ones in small batches, so the
    matrix products stay large while padding stays a few percent (fixed-size batches of the
    sorted sentences pad the long tail heavily)."""
    if max_tokens < 1:
        raise ValueError("the token budget must be at least 1")
    order = np.argsort(lengths, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    for end in range(1, len(order) + 1):
        # Sorted ascending, so the sentence just added is the longest of the batch.
        if end < len(order) and (end + 1 - start) * int(lengths[order[end]]) <= max_tokens:
            continue
        batches.append(order[start:end])
        start = end
    return batches

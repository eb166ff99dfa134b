"""Tagging encoded sentences with a model in batches: shared by evaluation, inference with a saved
model and teachers. Below training, so that teachers and inference need no training code."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from kd.data.batching import EncodedDataset, token_budget_batches
from kd.data.types import Sentence
from kd.data.vocab import Vocabularies
from kd.models.device import autocast
from kd.models.tagger import Tagger

# Larger budgets mean larger matrix products but more padding. bench/predict_batches.py on
# NCBI-disease test, 2 CPU threads: 4,096 is within 3% of the best fp32 budget (2,048) and 7% of
# the best bf16 one (8,192).
PREDICT_BATCH_TOKENS = 4096


def as_sentences(token_lists: Sequence[Sequence[str]]) -> list[Sentence]:
    """Wraps untagged token lists for encoding; the placeholder tags are never read."""
    return [Sentence(tuple(tokens), ("O",) * len(tokens)) for tokens in token_lists]


ScoredTags = tuple[list[list[str]], list[list[float]] | None]


def tag_non_empty(token_lists: Sequence[Sequence[str]], with_scores: bool,
                  tag_sentences: Callable[[list[Sentence]], ScoredTags]) -> ScoredTags:
    """Tags (and, `with_scores`, scores) of every token list in order: `tag_sentences` gets the
    non-empty ones as Sentences and returns theirs in that order; an empty list gets none."""
    non_empty = [i for i, tokens in enumerate(token_lists) if len(tokens) > 0]
    tagged: list[list[str]] = [[] for _ in token_lists]
    scored: list[list[float]] | None = [[] for _ in token_lists] if with_scores else None
    if non_empty:
        tags, scores = tag_sentences(as_sentences([token_lists[i] for i in non_empty]))
        for row, i in enumerate(non_empty):
            tagged[i] = tags[row]
            if scored is not None:
                scored[i] = scores[row]
    return tagged, scored


def dataset_form_table(model: Tagger, dataset: EncodedDataset, device: torch.device,
                       precision: str = "fp32") -> torch.Tensor:
    """The model's character BiLSTM vectors of every form of the dataset, by form id, for
    inference over many batches of it (`Tagger.encode_form_table`)."""
    with autocast(device, precision):
        return model.encode_form_table(torch.from_numpy(dataset.form_chars).to(device),
                                       torch.from_numpy(dataset.form_lengths))


@torch.no_grad()
def predict_tags(model: Tagger, dataset: EncodedDataset, vocabularies: Vocabularies, task: str,
                 device: torch.device, precision: str = "fp32",
                 batch_tokens: int = PREDICT_BATCH_TOKENS) -> list[list[str]]:
    """Tag strings for every sentence of the dataset, in dataset order, in batches of at most
    `batch_tokens` padded tokens (a longer sentence goes alone)."""
    form_table = dataset_form_table(model, dataset, device, precision)
    return decode_in_batches(model, dataset, vocabularies.tags[task], task, device, precision, batch_tokens,
                             extra=(form_table,))


def decode_in_batches(model: torch.nn.Module, dataset: Any, tag_names: Sequence[str], task: str,
                      device: torch.device, precision: str, batch_tokens: int, extra: tuple = ()) -> list[list[str]]:
    """The best tag sequence of every sentence (`decode_scored_in_batches` without the scores)."""
    return decode_scored_in_batches(model, dataset, tag_names, task, DecodeSettings(device, precision, batch_tokens),
                                    extra)[0]


@dataclass(frozen=True)
class DecodeSettings:
    """Where and how a dataset is decoded: the device, the precision, padded words per batch."""
    device: torch.device
    precision: str = "fp32"
    batch_tokens: int = PREDICT_BATCH_TOKENS


def best_tag_probabilities(model: torch.nn.Module, output: Any, best: torch.Tensor, task: str) -> torch.Tensor:
    """(B, T) the probability of each token's chosen tag: its softmax probability under a softmax
    head, its marginal P(y_t = tag) under a CRF head (forward-backward; the Viterbi path's tags)."""
    crf = model.crf(task)
    logits = output.logits.float()
    probabilities = torch.softmax(logits, dim=2) if crf is None else crf.marginals(logits, output.mask)
    return probabilities.gather(2, best.unsqueeze(2)).squeeze(2)


@torch.no_grad()
def decode_scored_in_batches(model: torch.nn.Module, dataset: Any, tag_names: Sequence[str], task: str,
                             settings: DecodeSettings, extra: tuple = (),
                             with_scores: bool = False) -> tuple[list[list[str]], list[list[float]] | None]:
    """The best tag sequence of every sentence of any kd dataset (`lengths`, `batch(ids)` longest
    first with `sentence_ids`) under any tagger (`model(batch, task, *extra)`, `decode`), in dataset
    order, in batches of at most `settings.batch_tokens` padded words; the model's train/eval mode is kept.
    `with_scores`: also each token's probability of its tag (`best_tag_probabilities`), else None."""
    was_training = model.training
    model.eval()
    predictions: list[list[str]] = [[] for _ in range(len(dataset.lengths))]
    scores: list[list[float]] | None = [[] for _ in predictions] if with_scores else None
    for sentence_ids in token_budget_batches(dataset.lengths, settings.batch_tokens):
        batch = dataset.batch(sentence_ids).to(settings.device)
        with autocast(settings.device, settings.precision):
            output = model(batch, task, *extra)
        best_ids = model.decode(output, task)
        best = best_ids.cpu().tolist()
        probabilities = best_tag_probabilities(model, output, best_ids, task).cpu().tolist() if with_scores else None
        for row, sentence_id in enumerate(batch.sentence_ids.tolist()):
            length = int(dataset.lengths[sentence_id])
            predictions[sentence_id] = [tag_names[t] for t in best[row][:length]]
            if scores is not None:
                scores[sentence_id] = probabilities[row][:length]
    model.train(was_training)
    return predictions, scores

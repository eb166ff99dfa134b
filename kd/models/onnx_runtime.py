"""Tagging token lists with an exported ONNX tagger (kd.models.onnx_export) in ONNX Runtime: the
same encoding and batches as the torch path (kd.models.predict), the graph's emission scores, then
per-token argmax or the CRF's Viterbi in numpy, with the torch decoder's operations in the same
order and float32, so that the tags are the torch model's. onnxruntime is imported only here."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.special import logsumexp, softmax

from kd.data.batching import EncodedDataset, token_budget_batches
from kd.data.vocab import Vocabularies
from kd.errors import FieldError, KdError
from kd.models.io import SavedModel
from kd.models.onnx_export import (INPUT_NAMES, METADATA_CRF, METADATA_DESCRIPTION, METADATA_FINGERPRINT,
                                   METADATA_TASK, model_fingerprint, require)
from kd.models.predict import PREDICT_BATCH_TOKENS, ScoredTags, tag_non_empty


def viterbi(emissions: np.ndarray, lengths: np.ndarray, transitions: np.ndarray, start: np.ndarray,
            end: np.ndarray) -> np.ndarray:
    """Best tag paths (B, T) of left-aligned sentences of the given lengths (>= 1), 0 at padding:
    kd.models.crf.CRF.decode in numpy. Ties go to the lowest tag id, as torch's max on CPU."""
    size, width, num_tags = emissions.shape
    active = np.arange(width)[None, :] < lengths[:, None]  # (B, T)
    identity = np.broadcast_to(np.arange(num_tags), (size, num_tags))
    delta = start + emissions[:, 0]
    backpointers = []
    for t in range(1, width):
        scores = delta[:, :, None] + transitions[None]  # (B, from, to)
        best_from = scores.argmax(axis=1)
        best = np.take_along_axis(scores, best_from[:, None, :], axis=1)[:, 0]
        step = active[:, t:t + 1]
        delta = np.where(step, best + emissions[:, t], delta)
        backpointers.append(np.where(step, best_from, identity))
    tag = (delta + end).argmax(axis=1)
    path = [tag]
    for pointers in reversed(backpointers):
        tag = np.take_along_axis(pointers, tag[:, None], axis=1)[:, 0]
        path.append(tag)
    return np.where(active, np.stack(path[::-1], axis=1), 0)


def crf_marginals(emissions: np.ndarray, lengths: np.ndarray, transitions: np.ndarray, start: np.ndarray,
                  end: np.ndarray) -> np.ndarray:
    """Token marginals P(y_t = k) (B, T, K) by forward-backward: kd.models.crf.CRF.marginals in
    numpy, in float64 (the scores only; tags come from `viterbi`)."""
    emissions, transitions = emissions.astype(np.float64), transitions.astype(np.float64)
    width = emissions.shape[1]
    active = (np.arange(width)[None, :] < lengths[:, None])[:, :, None]  # (B, T, 1)
    alpha = start + emissions[:, 0]
    alphas = [alpha]
    for t in range(1, width):
        step = logsumexp(alpha[:, :, None] + transitions[None], axis=1) + emissions[:, t]
        alpha = np.where(active[:, t], step, alpha)
        alphas.append(alpha)
    log_z = logsumexp(alpha + end, axis=1)
    beta = np.broadcast_to(end.astype(np.float64), alpha.shape)
    betas = [beta]
    for t in range(width - 2, -1, -1):
        step = logsumexp(transitions[None] + (emissions[:, t + 1] + beta)[:, None, :], axis=2)
        beta = np.where(active[:, t + 1], step, beta)
        betas.append(beta)
    marginals = np.exp(np.stack(alphas, axis=1) + np.stack(betas[::-1], axis=1) - log_z[:, None, None])
    return np.where(active, marginals, 0.0)


class OnnxTagger:
    """An exported tagger loaded in ONNX Runtime; `tag` as kd.models.inference.SavedTagger's."""

    def __init__(self, path: str | Path, shown_as: str | None = None, threads: int | None = None) -> None:
        onnxruntime = require("onnxruntime")
        self.shown_as = shown_as or str(path)
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        # Waiting threads sleep rather than spin: on the shared 2-core machine, 2 threads tagged
        # NCBI-disease test in 1.76 s (median of 4) this way and in 2.17 s spinning.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types for unreadable files
            raise KdError(f"{self.shown_as}: not an ONNX model ({str(error).splitlines()[0]})") from None
        metadata = self.session.get_modelmeta().custom_metadata_map
        if METADATA_DESCRIPTION not in metadata or METADATA_TASK not in metadata:
            raise KdError(f"{self.shown_as}: an ONNX model without kd's description (export it with kd export)")
        try:
            description = json.loads(metadata[METADATA_DESCRIPTION])
            self.vocabularies = Vocabularies.from_json(description["vocabularies"])
            self.task = metadata[METADATA_TASK]
            self.tag_names = self.vocabularies.tags[self.task]
            crf = json.loads(metadata[METADATA_CRF]) if METADATA_CRF in metadata else None
        except (KeyError, TypeError, ValueError) as error:
            raise KdError(f"{self.shown_as}: invalid kd description in the ONNX model ({error})") from None
        self.fingerprint = metadata.get(METADATA_FINGERPRINT, "")
        self.crf = None if crf is None else tuple(np.asarray(crf[name], dtype=np.float32)
                                                  for name in ("transitions", "start", "end"))

    def check_matches(self, saved: SavedModel, model_shown_as: str) -> None:
        """Refuses (KdError) an ONNX file exported from another model than `saved`."""
        if self.fingerprint != model_fingerprint(saved):
            raise KdError(f"{self.shown_as}: the ONNX model was not exported from {model_shown_as} "
                          f"(its weights or vocabularies differ); export it again with kd export")

    def check_task(self, task: str | None) -> None:
        if task is not None and task != self.task:
            raise FieldError("task", task, f"the ONNX model {self.shown_as} tags {self.task} only; export that task")

    def tag(self, sentences: Sequence[Sequence[str]], batch_tokens: int = PREDICT_BATCH_TOKENS,
            source: str | None = None) -> list[list[str]]:
        """One tag per token of every sentence, in order; empty sentences get no tags. `source` (the
        input file) is SavedTagger's: a BiLSTM graph has no sentence length limit to name it in."""
        return self.tag_with_scores(sentences, batch_tokens, with_scores=False)[0]

    def tag_with_scores(self, sentences: Sequence[Sequence[str]], batch_tokens: int = PREDICT_BATCH_TOKENS,
                        with_scores: bool = True) -> tuple[list[list[str]], list[list[float]] | None]:
        """As `tag`, and each token's probability of its tag (softmax, or CRF marginal), as torch's."""
        return tag_non_empty(sentences, with_scores, lambda chosen: self._decode_all(chosen, batch_tokens, with_scores))

    def _decode_all(self, chosen: list, batch_tokens: int, with_scores: bool) -> ScoredTags:
        dataset = EncodedDataset(chosen, self.vocabularies, self.task, with_tags=False)
        tagged: list[list[str]] = [[] for _ in chosen]
        scored: list[list[float]] | None = [[] for _ in chosen] if with_scores else None
        for sentence_ids in token_budget_batches(dataset.lengths, batch_tokens):
            batch = dataset.batch(sentence_ids)
            feeds = {name: getattr(batch, name).numpy() for name in INPUT_NAMES}
            (emissions,) = self.session.run(None, feeds)
            emissions = emissions.astype(np.float32, copy=False)
            best = self.decode(emissions, feeds["lengths"])
            probabilities = self.best_tag_probabilities(emissions, feeds["lengths"], best) if with_scores else None
            for row, sentence_id in enumerate(batch.sentence_ids.tolist()):
                length = int(dataset.lengths[sentence_id])
                tagged[sentence_id] = [self.tag_names[t] for t in best[row, :length].tolist()]
                if scored is not None:
                    scored[sentence_id] = probabilities[row, :length].tolist()
        return tagged, scored

    def best_tag_probabilities(self, emissions: np.ndarray, lengths: np.ndarray, best: np.ndarray) -> np.ndarray:
        probabilities = softmax(emissions, axis=2) if self.crf is None else crf_marginals(emissions, lengths, *self.crf)
        return np.take_along_axis(probabilities, best[:, :, None], axis=2)[:, :, 0]

    def decode(self, emissions: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        if self.crf is None:
            return emissions.argmax(axis=2)
        return viterbi(emissions, lengths, *self.crf)

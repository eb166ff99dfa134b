"""The hard-label term every model is trained with."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kd.data.batching import NO_TAG
from kd.models.crf import CRF
from kd.models.tagger import TaggerOutput


def hard_label_loss(output: TaggerOutput, tags: torch.Tensor, crf: CRF | None) -> torch.Tensor:
    """Negative log-likelihood of the gold tags, summed over each sentence and averaged over
    sentences: token cross-entropy for a softmax head, the sequence NLL for a CRF head. Padding
    never contributes, nor do unlabelled sentences (tags NO_TAG), which still count in the average:
    a batch's terms keep one scale however many of its sentences have gold tags."""
    mask = output.mask
    sentences = mask.shape[0]
    if crf is None:
        return F.cross_entropy(output.logits[mask].float(), tags[mask], ignore_index=NO_TAG, reduction="sum") / sentences
    labelled = tags[:, 0] != NO_TAG
    if bool(labelled.all()):
        return crf.nll(output.logits.float(), tags, mask).sum() / sentences
    nll = crf.nll(output.logits.float(), tags.clamp_min(0), mask)
    return torch.where(labelled, nll, torch.zeros_like(nll)).sum() / sentences

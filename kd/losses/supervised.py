"""The hard-label term every model is trained with."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kd.models.crf import CRF
from kd.models.tagger import TaggerOutput


def hard_label_loss(output: TaggerOutput, tags: torch.Tensor, crf: CRF | None) -> torch.Tensor:
    """Negative log-likelihood of the gold tags, summed over each sentence and averaged over
    sentences: token cross-entropy for a softmax head, the sequence NLL for a CRF head. Padding
    never contributes."""
    mask = output.mask
    sentences = mask.shape[0]
    if crf is None:
        return F.cross_entropy(output.logits[mask].float(), tags[mask], reduction="sum") / sentences
    return crf.nll(output.logits.float(), tags, mask).sum() / sentences

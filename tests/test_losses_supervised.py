"""hard_label_loss against hand computations on made-up tagger outputs."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from kd.losses.supervised import hard_label_loss
from kd.models.crf import CRF
from kd.models.tagger import TaggerOutput

LENGTHS = [4, 2, 1]
K = 3


def made_up(seed: int = 0, dtype=torch.float32, padding_logits: float | None = None, padding_tag: int = 0):
    gen = torch.Generator().manual_seed(seed)
    B, T = len(LENGTHS), max(LENGTHS)
    mask = torch.arange(T)[None, :] < torch.tensor(LENGTHS)[:, None]
    logits = (3 * torch.randn(B, T, K, generator=gen, dtype=torch.float64)).to(dtype)
    tags = torch.randint(0, K, (B, T), generator=gen)
    if padding_logits is not None:
        logits[~mask] = padding_logits
    tags[~mask] = padding_tag
    output = TaggerOutput(logits=logits, task_hidden=torch.zeros(B, T, 2), shared_hidden=torch.zeros(B, T, 2),
                          mask=mask)
    return output, tags


def softmax_by_hand(output: TaggerOutput, tags: torch.Tensor) -> float:
    total = 0.0
    for b, length in enumerate(LENGTHS):
        for t in range(length):
            row = [float(x) for x in output.logits[b, t]]
            log_norm = math.log(sum(math.exp(x) for x in row))
            total += log_norm - row[int(tags[b, t])]
    return total / len(LENGTHS)


def crf_by_hand(crf: CRF, output: TaggerOutput, tags: torch.Tensor) -> float:
    """Sequence NLL averaged over sentences, by enumerating every tag path."""
    trans, start, end = (p.detach().double() for p in (crf.transitions, crf.start, crf.end))

    def score(em, path):
        s = start[path[0]] + end[path[-1]] + sum(em[t, y] for t, y in enumerate(path))
        return float(s + sum(trans[path[t - 1], path[t]] for t in range(1, len(path))))

    total = 0.0
    for b, length in enumerate(LENGTHS):
        em = output.logits[b, :length].double()
        log_z = math.log(sum(math.exp(score(em, p)) for p in itertools.product(range(K), repeat=length)))
        total += log_z - score(em, [int(y) for y in tags[b, :length]])
    return total / len(LENGTHS)


def make_crf(seed: int = 0) -> CRF:
    gen = torch.Generator().manual_seed(seed + 100)
    crf = CRF(K)
    with torch.no_grad():
        for p in crf.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return crf


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_softmax_loss_equals_hand_computation(seed):
    output, tags = made_up(seed)
    loss = hard_label_loss(output, tags, None)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(softmax_by_hand(output, tags), rel=1e-5)


def test_softmax_loss_ignores_padding():
    output, tags = made_up(0)
    reference = hard_label_loss(output, tags, None)
    garbage_output, garbage_tags = made_up(0, padding_logits=float("nan"), padding_tag=-100)
    garbage_output.logits.requires_grad_(True)
    loss = hard_label_loss(garbage_output, garbage_tags, None)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    loss.backward()
    grad = garbage_output.logits.grad
    assert torch.all(grad[~output.mask] == 0)
    assert torch.isfinite(grad[output.mask]).all()


def test_softmax_loss_in_float32_for_bf16_logits():
    output, tags = made_up(0, dtype=torch.bfloat16)
    loss = hard_label_loss(output, tags, None)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(softmax_by_hand(output, tags), rel=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_crf_loss_equals_brute_force_and_crf_nll(seed):
    output, tags = made_up(seed)
    crf = make_crf(seed)
    loss = hard_label_loss(output, tags, crf)
    assert loss.dim() == 0
    expected = crf.nll(output.logits, tags, output.mask).sum() / len(LENGTHS)
    torch.testing.assert_close(loss, expected)
    assert loss.item() == pytest.approx(crf_by_hand(crf, output, tags), rel=1e-5)


def test_crf_loss_ignores_padding_and_trains_crf():
    output, tags = made_up(0)
    crf = make_crf(0)
    reference = hard_label_loss(output, tags, crf)
    garbage_output, garbage_tags = made_up(0, padding_logits=1e4, padding_tag=2)
    garbage_output.logits.requires_grad_(True)
    loss = hard_label_loss(garbage_output, garbage_tags, crf)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    loss.backward()
    assert torch.all(garbage_output.logits.grad[~output.mask] == 0)
    assert crf.transitions.grad is not None and crf.transitions.grad.abs().sum() > 0


def test_crf_loss_is_float32_for_bf16_logits():
    output, tags = made_up(0, dtype=torch.bfloat16)
    crf = make_crf(0)
    loss = hard_label_loss(output, tags, crf)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(crf_by_hand(crf, output, tags), rel=1e-5)

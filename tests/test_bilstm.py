"""BiLSTM tests against torch's own bidirectional LSTM run on each sentence alone (no padding)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from kd.models.bilstm import BiLSTM, reversal_index, reverse_padded

INPUT, HIDDEN = 5, 4
LENGTHS = [6, 4, 4, 1, 2]  # mixed lengths, not sorted, with a tie and a one-token sentence


def make_pair(dtype=torch.float32, seed: int = 0) -> tuple[BiLSTM, nn.LSTM]:
    """kd's BiLSTM and a torch bidirectional LSTM holding the same weights."""
    torch.manual_seed(seed)
    ours = BiLSTM(INPUT, HIDDEN).to(dtype)
    reference = nn.LSTM(INPUT, HIDDEN, batch_first=True, bidirectional=True).to(dtype)
    with torch.no_grad():
        for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            getattr(reference, name).copy_(getattr(ours.forward_lstm, name))
            getattr(reference, name + "_reverse").copy_(getattr(ours.backward_lstm, name))
    return ours, reference


def padded_batch(lengths: list[int], dtype=torch.float32, padding: float = 0.0, seed: int = 1):
    """(B, T, I) inputs with `padding` after each sentence, and the sentences alone."""
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    sentences = [torch.randn(length, INPUT, generator=gen, dtype=dtype) for length in lengths]
    x = torch.full((len(lengths), width, INPUT), padding, dtype=dtype)
    for row, sentence in enumerate(sentences):
        x[row, : len(sentence)] = sentence
    return x, sentences


def run(ours: BiLSTM, x: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    lengths_t = torch.tensor(lengths)
    return ours(x, reversal_index(lengths_t, x.shape[1]))


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_outputs_equal_reference_on_each_sentence_alone(dtype, atol):
    ours, reference = make_pair(dtype)
    x, sentences = padded_batch(LENGTHS, dtype)
    with torch.no_grad():
        out = run(ours, x, LENGTHS)
        assert out.shape == (len(LENGTHS), max(LENGTHS), 2 * HIDDEN)
        for row, sentence in enumerate(sentences):
            expected, _ = reference(sentence.unsqueeze(0))
            torch.testing.assert_close(out[row, : len(sentence)], expected[0], atol=atol, rtol=0)


def test_forward_and_backward_halves_are_in_the_reference_order():
    """First H features: left-to-right state; last H: right-to-left state (as torch orders them)."""
    ours, _ = make_pair(torch.float64)
    x, sentences = padded_batch([3], torch.float64)
    with torch.no_grad():
        out = run(ours, x, [3])[0]
        forward, _ = ours.forward_lstm(sentences[0].unsqueeze(0))
        backward, _ = ours.backward_lstm(sentences[0].flip(0).unsqueeze(0))
    torch.testing.assert_close(out[:, :HIDDEN], forward[0])
    torch.testing.assert_close(out[:, HIDDEN:], backward[0].flip(0))


def test_padding_content_does_not_change_real_positions():
    ours, _ = make_pair(torch.float64)
    x_zero, _ = padded_batch(LENGTHS, torch.float64, padding=0.0)
    x_garbage = x_zero.clone()
    mask = torch.arange(max(LENGTHS))[None, :] < torch.tensor(LENGTHS)[:, None]
    gen = torch.Generator().manual_seed(7)
    garbage = 1e3 * torch.randn(x_zero.shape, generator=gen, dtype=torch.float64)
    x_garbage[~mask] = garbage[~mask]
    with torch.no_grad():
        a = run(ours, x_zero, LENGTHS)
        b = run(ours, x_garbage, LENGTHS)
    torch.testing.assert_close(a[mask], b[mask], atol=0, rtol=0)


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_final_states_equal_reference_h_n_of_each_sentence_alone(dtype, atol):
    ours, reference = make_pair(dtype)
    x, sentences = padded_batch(LENGTHS, dtype, padding=3.0)
    lengths_t = torch.tensor(LENGTHS)
    with torch.no_grad():
        final = ours.final_states(x, lengths_t, reversal_index(lengths_t, x.shape[1]))
        assert final.shape == (len(LENGTHS), 2 * HIDDEN)
        for row, sentence in enumerate(sentences):
            _, (h_n, _) = reference(sentence.unsqueeze(0))  # h_n: (2, 1, H), forward then backward
            torch.testing.assert_close(final[row], torch.cat([h_n[0, 0], h_n[1, 0]]), atol=atol, rtol=0)


def test_gradients_flow_and_match_reference_per_sentence():
    ours, reference = make_pair(torch.float64)
    x, sentences = padded_batch(LENGTHS, torch.float64, padding=5.0)
    x.requires_grad_(True)
    gen = torch.Generator().manual_seed(3)
    weights = torch.randn(len(LENGTHS), max(LENGTHS), 2 * HIDDEN, generator=gen, dtype=torch.float64)
    mask = torch.arange(max(LENGTHS))[None, :] < torch.tensor(LENGTHS)[:, None]
    out = run(ours, x, LENGTHS)
    (out * weights * mask.unsqueeze(2)).sum().backward()

    for parameter in ours.parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0
    # nothing at a padding position can influence a real one
    assert torch.all(x.grad[~mask] == 0)

    reference_grads = {name: torch.zeros_like(p) for name, p in reference.named_parameters()}
    for row, sentence in enumerate(sentences):
        alone = sentence.clone().unsqueeze(0).requires_grad_(True)
        reference.zero_grad()
        expected, _ = reference(alone)
        (expected[0] * weights[row, : len(sentence)]).sum().backward()
        torch.testing.assert_close(x.grad[row, : len(sentence)], alone.grad[0])
        for name, p in reference.named_parameters():
            reference_grads[name] += p.grad
    for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
        torch.testing.assert_close(getattr(ours.forward_lstm, name).grad, reference_grads[name])
        torch.testing.assert_close(getattr(ours.backward_lstm, name).grad, reference_grads[name + "_reverse"])


def test_reversal_index_by_hand():
    index = reversal_index(torch.tensor([3, 1, 4, 2]), 4)
    expected = torch.tensor([[2, 1, 0, 3],
                             [0, 1, 2, 3],
                             [3, 2, 1, 0],
                             [1, 0, 2, 3]])
    assert torch.equal(index, expected)


def test_reversing_twice_is_identity_and_padding_stays():
    lengths = torch.tensor([5, 2, 1, 5, 3])
    width = 6  # wider than every sentence: every row has padding
    index = reversal_index(lengths, width)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(len(lengths), width, 3, generator=gen)
    once = reverse_padded(x, index)
    twice = reverse_padded(once, index)
    assert torch.equal(twice, x)
    for row, length in enumerate(lengths.tolist()):
        assert torch.equal(once[row, :length], x[row, :length].flip(0))
        assert torch.equal(once[row, length:], x[row, length:])


@pytest.mark.parametrize("time_major", [False, True])
def test_reverse_padded_matches_gather_with_its_gradient(time_major):
    """Rows are permuted in place for batch-major and for time-major (LSTM output) memory; both
    must equal an element-wise gather, and so must the gradient."""
    lengths = torch.tensor([5, 3, 5, 1])
    index = reversal_index(lengths, 6)
    gen = torch.Generator().manual_seed(3)
    leaf = torch.randn((6, 4, 3) if time_major else (4, 6, 3), generator=gen, requires_grad=True)
    x = leaf.transpose(0, 1) if time_major else leaf
    expected = x.gather(1, index.unsqueeze(2).expand_as(x))
    grad_out = torch.randn(4, 6, 3, generator=gen)
    (expected_grad,) = torch.autograd.grad(expected, leaf, grad_out)
    reversed_x = reverse_padded(x, index)
    assert torch.equal(reversed_x, expected)
    (grad,) = torch.autograd.grad(reversed_x, leaf, grad_out)
    assert torch.equal(grad, expected_grad)

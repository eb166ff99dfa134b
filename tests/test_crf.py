"""CRF tests against brute-force enumeration of every tag path."""
from __future__ import annotations

import copy
import itertools

import pytest
import torch

from kd.models.crf import CRF

SEEDS = [0, 1, 2, 3, 4]
TOL = dict(atol=1e-5, rtol=1e-5)


def make_crf(num_tags: int, seed: int, dtype=torch.float64) -> CRF:
    gen = torch.Generator().manual_seed(seed + 1000)
    crf = CRF(num_tags).to(dtype)
    with torch.no_grad():
        crf.transitions.copy_(torch.randn(num_tags, num_tags, generator=gen, dtype=dtype))
        crf.start.copy_(torch.randn(num_tags, generator=gen, dtype=dtype))
        crf.end.copy_(torch.randn(num_tags, generator=gen, dtype=dtype))
    return crf


def lengths_to_mask(lengths: list[int], T: int) -> torch.Tensor:
    return torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]


# ---------------------------------------------------------------- brute force


def path_score(crf: CRF, em: torch.Tensor, path: tuple[int, ...]) -> float:
    """Score of one path of one sentence, straight from the definition (em: (L, K))."""
    trans, start, end = crf.transitions.detach(), crf.start.detach(), crf.end.detach()
    s = start[path[0]].item() + end[path[-1]].item()
    for t, y in enumerate(path):
        s += em[t, y].item()
        if t > 0:
            s += trans[path[t - 1], y].item()
    return s


def brute_force(crf: CRF, em: torch.Tensor):
    """log Z, best path, marginals (L, K) and the score table of one sentence."""
    L, K = em.shape
    paths = list(itertools.product(range(K), repeat=L))
    scores = torch.tensor([path_score(crf, em, p) for p in paths], dtype=torch.float64)
    log_z = torch.logsumexp(scores, dim=0)
    best = paths[int(scores.argmax())]
    probs = (scores - log_z).exp()
    marg = torch.zeros(L, K, dtype=torch.float64)
    for p, pr in zip(paths, probs):
        for t, y in enumerate(p):
            marg[t, y] += pr
    return log_z, best, marg


def garbage_batch(seed: int, lengths: list[int], T: int, K: int):
    """Random emissions/tags with garbage (huge values, nan, invalid ids) in the padding."""
    gen = torch.Generator().manual_seed(seed)
    B = len(lengths)
    mask = lengths_to_mask(lengths, T)
    em = torch.randn(B, T, K, generator=gen, dtype=torch.float64)
    tags = torch.randint(0, K, (B, T), generator=gen)
    pad = ~mask
    em[pad] = torch.tensor([1e4, -1e4, float("nan")] * K, dtype=torch.float64)[:K]
    tags[pad] = -100
    return em, tags, mask


# ------------------------------------------------------------------- exactness


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("L,K", [(1, 3), (2, 2), (3, 3), (4, 3), (5, 2)])
def test_single_sentence_matches_brute_force(seed, L, K):
    torch.manual_seed(seed)
    crf = make_crf(K, seed)
    em = torch.randn(1, L, K, dtype=torch.float64)
    mask = torch.ones(1, L, dtype=torch.bool)
    tags = torch.randint(0, K, (1, L))
    log_z, best, marg = brute_force(crf, em[0])

    torch.testing.assert_close(crf.log_partition(em, mask)[0], log_z, **TOL)
    expected_score = path_score(crf, em[0], tuple(tags[0].tolist()))
    assert crf.score(em, tags, mask)[0].item() == pytest.approx(expected_score, abs=1e-5)
    assert tuple(crf.decode(em, mask)[0].tolist()) == best
    torch.testing.assert_close(crf.marginals(em, mask)[0], marg, **TOL)
    nll = crf.nll(em, tags, mask)[0].item()
    assert nll == pytest.approx(log_z.item() - expected_score, abs=1e-5)


@pytest.mark.parametrize("seed", SEEDS)
def test_mixed_lengths_match_brute_force_and_single(seed):
    K, T = 3, 4
    lengths = [1, 2, 4, 3, 4]
    crf = make_crf(K, seed)
    em, tags, mask = garbage_batch(seed, lengths, T, K)

    log_z = crf.log_partition(em, mask)
    score = crf.score(em, tags, mask)
    nll = crf.nll(em, tags, mask)
    path = crf.decode(em, mask)
    marg = crf.marginals(em, mask)
    for out in (log_z, score, nll, marg):
        assert torch.isfinite(out).all()

    for b, L in enumerate(lengths):
        e1, t1, m1 = em[b : b + 1, :L], tags[b : b + 1, :L], mask[b : b + 1, :L]
        # alone, unpadded: exactly the same
        assert torch.equal(crf.log_partition(e1, m1)[0], log_z[b])
        assert torch.equal(crf.score(e1, t1, m1)[0], score[b])
        assert torch.equal(crf.nll(e1, t1, m1)[0], nll[b])
        assert torch.equal(crf.decode(e1, m1)[0], path[b, :L])
        assert torch.equal(crf.marginals(e1, m1)[0], marg[b, :L])
        # and right against brute force
        bz, bbest, bmarg = brute_force(crf, em[b, :L])
        torch.testing.assert_close(log_z[b], bz, **TOL)
        assert score[b].item() == pytest.approx(
            path_score(crf, em[b, :L], tuple(tags[b, :L].tolist())), abs=1e-5
        )
        assert tuple(path[b, :L].tolist()) == bbest
        torch.testing.assert_close(marg[b, :L], bmarg, **TOL)
        # padding
        assert (path[b, L:] == 0).all()
        assert (marg[b, L:] == 0).all()


@pytest.mark.parametrize("seed", SEEDS)
def test_padding_garbage_changes_nothing(seed):
    K, T = 4, 6
    lengths = [6, 1, 3, 5]
    crf = make_crf(K, seed)
    em, tags, mask = garbage_batch(seed, lengths, T, K)
    gen = torch.Generator().manual_seed(seed + 7)
    em2, tags2 = em.clone(), tags.clone()
    em2[~mask] = torch.randn(int((~mask).sum()), K, generator=gen, dtype=torch.float64) * 50
    tags2[~mask] = torch.randint(0, K, (int((~mask).sum()),), generator=gen)

    assert torch.equal(crf.log_partition(em, mask), crf.log_partition(em2, mask))
    assert torch.equal(crf.score(em, tags, mask), crf.score(em2, tags2, mask))
    assert torch.equal(crf.nll(em, tags, mask), crf.nll(em2, tags2, mask))
    assert torch.equal(crf.decode(em, mask), crf.decode(em2, mask))
    assert torch.equal(crf.marginals(em, mask), crf.marginals(em2, mask))


@pytest.mark.parametrize("seed", SEEDS)
def test_length_one_batch(seed):
    K = 3
    crf = make_crf(K, seed)
    em, tags, mask = garbage_batch(seed, [1, 1], 1, K)
    log_z = crf.log_partition(em, mask)
    for b in range(2):
        bz, bbest, bmarg = brute_force(crf, em[b, :1])
        torch.testing.assert_close(log_z[b], bz, **TOL)
        direct = torch.logsumexp(crf.start + em[b, 0] + crf.end, 0).detach()
        torch.testing.assert_close(log_z[b], direct, **TOL)
        assert tuple(crf.decode(em, mask)[b, :1].tolist()) == bbest
        torch.testing.assert_close(crf.marginals(em, mask)[b], bmarg, **TOL)


# --------------------------------------------------------------- properties


@pytest.mark.parametrize("seed", SEEDS)
def test_marginals_normalised_and_zero_at_padding(seed):
    K, T = 5, 7
    lengths = [7, 3, 1, 5]
    crf = make_crf(K, seed)
    em, _, mask = garbage_batch(seed, lengths, T, K)
    marg = crf.marginals(em, mask)
    assert marg.shape == (len(lengths), T, K)
    assert (marg >= 0).all()
    sums = marg.sum(-1)
    torch.testing.assert_close(sums[mask], torch.ones(int(mask.sum()), dtype=torch.float64), **TOL)
    assert (marg[~mask] == 0).all()


@pytest.mark.parametrize("seed", SEEDS)
def test_nll_nonnegative_and_gradcheck(seed):
    K, T = 3, 4
    lengths = [4, 2, 1]
    crf = make_crf(K, seed)
    em, tags, mask = garbage_batch(seed, lengths, T, K)
    em = torch.where(mask.unsqueeze(-1), em, torch.zeros(()))  # gradcheck needs finite inputs
    em.requires_grad_(True)

    nll = crf.nll(em, tags, mask)
    assert (nll >= 0).all()

    params = (crf.transitions, crf.start, crf.end)

    # functional wrapper so that gradcheck perturbs the parameters as well
    class NLL(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.crf = crf

        def forward(self, e):
            return self.crf.nll(e, tags, mask)

    wrapper = NLL()

    def f(e, tr, st, en):
        p = {"crf.transitions": tr, "crf.start": st, "crf.end": en}
        return torch.func.functional_call(wrapper, p, (e,), strict=True)

    inputs = (em,) + tuple(p.detach().clone().requires_grad_(True) for p in params)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("seed", SEEDS)
def test_marginals_differentiable(seed):
    K, T = 3, 4
    crf = make_crf(K, seed)
    em, _, mask = garbage_batch(seed, [4, 2], T, K)
    em = torch.where(mask.unsqueeze(-1), em, torch.zeros(())).requires_grad_(True)
    marg = crf.marginals(em, mask)
    assert marg.requires_grad
    (marg * torch.randn_like(marg)).sum().backward()
    assert em.grad is not None and torch.isfinite(em.grad).all()
    assert crf.transitions.grad is not None


@pytest.mark.parametrize("seed", SEEDS)
def test_nll_gradient_is_marginals(seed):
    """d nll / d emissions = marginals - one_hot(tags) at real positions, 0 at padding."""
    K, T = 4, 5
    crf = make_crf(K, seed)
    em, tags, mask = garbage_batch(seed, [5, 3, 1], T, K)
    em = torch.where(mask.unsqueeze(-1), em, torch.zeros(())).requires_grad_(True)
    crf.nll(em, tags, mask).sum().backward()
    onehot = torch.nn.functional.one_hot(torch.where(mask, tags, 0), K).double()
    expected = (crf.marginals(em, mask) - onehot).detach() * mask.unsqueeze(-1)
    torch.testing.assert_close(em.grad, expected, **TOL)


def test_garbage_padding_gives_finite_gradients():
    K, T = 3, 5
    crf = make_crf(K, 0)
    em, tags, mask = garbage_batch(0, [5, 2, 1], T, K)  # nan / 1e4 in padding
    em.requires_grad_(True)
    crf.nll(em, tags, mask).sum().backward()
    assert torch.isfinite(em.grad).all()
    assert (em.grad[~mask] == 0).all()
    for p in crf.parameters():
        assert torch.isfinite(p.grad).all()


# ----------------------------------------------------------- dtypes and shapes


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_keeps_emission_dtype(dtype):
    K, T = 4, 6
    crf = CRF(K)  # float32 parameters
    gen = torch.Generator().manual_seed(0)
    em = torch.randn(2, T, K, generator=gen).to(dtype)
    mask = lengths_to_mask([6, 3], T)
    tags = torch.randint(0, K, (2, T), generator=gen)
    assert crf.log_partition(em, mask).dtype == dtype
    assert crf.score(em, tags, mask).dtype == dtype
    assert crf.nll(em, tags, mask).dtype == dtype
    assert crf.marginals(em, mask).dtype == dtype
    path = crf.decode(em, mask)
    assert path.dtype == torch.long and path.shape == (2, T)


def test_float32_agrees_with_float64():
    K, T = 6, 40
    crf = make_crf(K, 3, dtype=torch.float32)
    gen = torch.Generator().manual_seed(3)
    em = torch.randn(4, T, K, generator=gen) * 3
    mask = lengths_to_mask([40, 17, 1, 33], T)
    crf64 = copy.deepcopy(crf).double()
    torch.testing.assert_close(
        crf.log_partition(em, mask).double(),
        crf64.log_partition(em.double(), mask),
        atol=1e-3,
        rtol=1e-5,
    )
    torch.testing.assert_close(
        crf.marginals(em, mask).double(), crf64.marginals(em.double(), mask), atol=1e-4, rtol=1e-4
    )


def test_init():
    crf = CRF(5)
    assert crf.transitions.shape == (5, 5)
    assert crf.start.shape == (5,) and crf.end.shape == (5,)
    assert (crf.transitions.abs() <= 0.1).all()
    assert (crf.start == 0).all() and (crf.end == 0).all()


def test_bad_shapes_raise():
    crf = CRF(3)
    em = torch.zeros(2, 4, 3)
    with pytest.raises(ValueError):
        crf.log_partition(torch.zeros(2, 4, 5), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError):
        crf.log_partition(em, torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError):
        crf.score(em, torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 4, dtype=torch.bool))

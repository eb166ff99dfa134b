"""Linear-chain conditional random field, batched over sentences.

All algorithms loop over time only; the batch and the tag dimension are handled
with tensor operations.  Shapes used throughout:

* ``emissions``: ``(B, T, K)`` float, unnormalised per-token tag scores;
* ``tags``: ``(B, T)`` long;
* ``mask``: ``(B, T)`` bool, left-aligned: row ``b`` is True for its first
  ``len_b >= 1`` positions and False afterwards.

Padding positions (mask False) may hold arbitrary emission values (even
inf/nan) and arbitrary tag ids (e.g. ``-100``); they never affect any result,
so a sentence gives exactly the same result in a padded batch as alone.

The score of a tag path ``y`` of a sentence of length ``L`` is::

    start[y_0] + sum_t emissions[t, y_t] + sum_{t>=1} transitions[y_{t-1}, y_t] + end[y_{L-1}]

Precision: run the CRF in float32 (or float64).  Results keep the dtype of the
emissions (the parameters are cast to it).  Under bf16/fp16 autocast the caller
must cast the emissions to float32 before calling: the forward/backward
recursions accumulate over the whole sentence and are not accurate in half
precision.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class CRF(nn.Module):
    """Linear-chain CRF with start, end and transition scores.

    Parameters: ``transitions`` ``(K, K)`` indexed ``[from_tag, to_tag]``,
    ``start`` ``(K,)`` and ``end`` ``(K,)``.
    """

    def __init__(self, num_tags: int) -> None:
        super().__init__()
        if num_tags < 1:
            raise ValueError(f"num_tags must be >= 1, got {num_tags}")
        self.num_tags = num_tags
        self.transitions = nn.Parameter(torch.empty(num_tags, num_tags))
        self.start = nn.Parameter(torch.zeros(num_tags))
        self.end = nn.Parameter(torch.zeros(num_tags))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.uniform_(self.transitions, -0.1, 0.1)
        nn.init.zeros_(self.start)
        nn.init.zeros_(self.end)

    def extra_repr(self) -> str:
        return f"num_tags={self.num_tags}"

    # ------------------------------------------------------------------ helpers

    def _check(self, emissions: Tensor, mask: Tensor, tags: Tensor | None = None) -> None:
        if emissions.dim() != 3 or emissions.size(2) != self.num_tags:
            raise ValueError(
                f"emissions must have shape (B, T, {self.num_tags}), got {tuple(emissions.shape)}"
            )
        if not emissions.is_floating_point():
            raise ValueError(f"emissions must be floating point, got {emissions.dtype}")
        if mask.shape != emissions.shape[:2]:
            raise ValueError(
                f"mask must have shape {tuple(emissions.shape[:2])}, got {tuple(mask.shape)}"
            )
        if emissions.size(1) < 1:
            raise ValueError("sequences must have at least one position (T >= 1)")
        if tags is not None and tags.shape != emissions.shape[:2]:
            raise ValueError(
                f"tags must have shape {tuple(emissions.shape[:2])}, got {tuple(tags.shape)}"
            )

    def _params(self, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """Parameters cast to the emissions' dtype (differentiable casts)."""
        return self.transitions.to(dtype), self.start.to(dtype), self.end.to(dtype)

    @staticmethod
    def _prepare(emissions: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
        """Bool mask, emissions with padding zeroed, and the mask per time step, T x ``(B, 1)``.

        Per-step slices are made with one ``unbind`` outside the time loop: indexing
        ``x[t]`` inside the loop would, under autograd, allocate a full-size zero
        gradient for every step in the backward pass.

        Zeroing the padding keeps every intermediate value finite (garbage such as
        inf/nan in padding could otherwise leak into gradients through ``where``).
        """
        mask = mask.to(torch.bool)
        em = torch.where(mask.unsqueeze(-1), emissions, emissions.new_zeros(()))
        mask_t = mask.transpose(0, 1).unsqueeze(-1).unbind(0)  # T x (B, 1)
        return mask, em, mask_t

    def _forward_alphas(
        self, em: Tensor, mask_t: tuple[Tensor, ...], keep_all: bool
    ) -> tuple[Tensor, list[Tensor]]:
        """Forward recursion; returns ``log Z`` ``(B,)`` and (optionally) every alpha_t.

        ``alpha_t[b, k]`` is the log-sum of the scores of all prefixes ending in tag
        ``k`` at position ``t`` (start + emissions + transitions up to ``t``).  At
        padding positions the state is carried unchanged, so after the loop ``alpha``
        is each sentence's state at its last real token.
        """
        trans, start, end = self._params(em.dtype)
        em_t = em.transpose(0, 1).unbind(0)  # T x (B, K)
        trans_b = trans.unsqueeze(0)  # (1, K_from, K_to)
        alpha = start + em_t[0]  # (B, K)
        alphas = [alpha] if keep_all else []
        for t in range(1, len(em_t)):
            nxt = torch.logsumexp(alpha.unsqueeze(2) + trans_b, dim=1) + em_t[t]
            alpha = torch.where(mask_t[t], nxt, alpha)
            if keep_all:
                alphas.append(alpha)
        log_z = torch.logsumexp(alpha + end, dim=1)
        return log_z, alphas

    # --------------------------------------------------------------------- API

    def score(self, emissions: Tensor, tags: Tensor, mask: Tensor) -> Tensor:
        """Unnormalised score ``(B,)`` of the given tag paths."""
        self._check(emissions, mask, tags)
        trans, start, end = self._params(emissions.dtype)
        mask, em, _ = self._prepare(emissions, mask)
        tags = torch.where(mask, tags.long(), tags.new_zeros((), dtype=torch.long))

        emit = em.gather(2, tags.unsqueeze(-1)).squeeze(-1)  # (B, T); 0 at padding
        total = start[tags[:, 0]] + emit.sum(dim=1)
        if tags.size(1) > 1:
            tr = trans[tags[:, :-1], tags[:, 1:]]  # (B, T-1)
            total = total + torch.where(mask[:, 1:], tr, tr.new_zeros(())).sum(dim=1)
        last = mask.sum(dim=1, keepdim=True) - 1  # (B, 1) index of last real token
        last_tags = tags.gather(1, last.clamp_min(0)).squeeze(1)
        return total + end[last_tags]

    def log_partition(self, emissions: Tensor, mask: Tensor) -> Tensor:
        """Log partition function ``(B,)`` by the forward algorithm in log space."""
        self._check(emissions, mask)
        _, em, mask_t = self._prepare(emissions, mask)
        log_z, _ = self._forward_alphas(em, mask_t, keep_all=False)
        return log_z

    def nll(self, emissions: Tensor, tags: Tensor, mask: Tensor) -> Tensor:
        """Negative log-likelihood ``(B,)`` of the tag paths: ``log Z - score``."""
        return self.log_partition(emissions, mask) - self.score(emissions, tags, mask)

    def decode(self, emissions: Tensor, mask: Tensor) -> Tensor:
        """Viterbi (highest-scoring) tag paths ``(B, T)`` long, 0 at padding."""
        self._check(emissions, mask)
        with torch.no_grad():
            trans, start, end = self._params(emissions.dtype)
            mask, em, mask_t = self._prepare(emissions.detach(), mask)
            trans, start, end = trans.detach(), start.detach(), end.detach()
            B, T, K = em.shape
            em_t = em.transpose(0, 1).unbind(0)  # T x (B, K)
            trans_b = trans.unsqueeze(0)
            identity = torch.arange(K, device=em.device).expand(B, K)
            delta = start + em_t[0]
            backpointers = []
            for t in range(1, T):
                best, idx = (delta.unsqueeze(2) + trans_b).max(dim=1)  # over from-tag
                delta = torch.where(mask_t[t], best + em_t[t], delta)
                # identity pointers at padding carry the last real tag backwards
                backpointers.append(torch.where(mask_t[t], idx, identity))
            tag = (delta + end).argmax(dim=1)  # (B,) tag at each sentence's last token
            path = [tag]
            for bp in reversed(backpointers):
                tag = bp.gather(1, tag.unsqueeze(1)).squeeze(1)
                path.append(tag)
            path.reverse()
            out = torch.stack(path, dim=1)
            return torch.where(mask, out, out.new_zeros(()))

    def marginals(self, emissions: Tensor, mask: Tensor) -> Tensor:
        """Token marginals ``P(y_t = k)`` ``(B, T, K)`` by forward-backward; 0 at padding.

        Differentiable (no ``no_grad`` inside), so it can be used on a student.
        """
        self._check(emissions, mask)
        trans, _, end = self._params(emissions.dtype)
        mask, em, mask_t = self._prepare(emissions, mask)
        log_z, alphas = self._forward_alphas(em, mask_t, keep_all=True)

        B, T, K = em.shape
        em_t = em.transpose(0, 1).unbind(0)  # T x (B, K)
        trans_b = trans.unsqueeze(0)  # (1, K_from, K_to)
        # beta_t[b, i]: log-sum of scores of all suffixes after position t given
        # y_t = i (transitions, emissions after t, end).  Until a sentence's last
        # real token is reached (scanning right to left) beta stays at ``end``.
        beta = end.expand(B, K)
        betas = [beta]
        for t in range(T - 2, -1, -1):
            nxt = torch.logsumexp(trans_b + (em_t[t + 1] + beta).unsqueeze(1), dim=2)
            beta = torch.where(mask_t[t + 1], nxt, beta)
            betas.append(beta)
        betas.reverse()

        log_marg = torch.stack(alphas, dim=1) + torch.stack(betas, dim=1) - log_z[:, None, None]
        marg = log_marg.exp()
        return torch.where(mask.unsqueeze(-1), marg, marg.new_zeros(()))

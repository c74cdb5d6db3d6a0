"""Soft-HGR H-score loss for training (eq. 3 of the H-score paper; Wang et al. 2019).

Objective E[f^T g] - 1/2 tr(cov(f) cov(g)) with f, g centred over the batch and the 1/N
normaliser. For fixed f its maximum over g is reached at g(y) = cov(f)^{-1} (E[f|Y=y] - E f)
and equals H(f) / 2 (section 4.2), so maximising it trains features with a large H-score
without inverting cov(f).
"""

from __future__ import annotations

import torch
from torch import nn


def soft_hgr(f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The soft-HGR objective (eq. 3) of paired batches f, g (B, k); differentiable once, by
    its closed-form gradient (:class:`_SoftHGR`)."""
    if f.dim() != 2 or f.shape != g.shape:
        raise ValueError(f"f and g must be (B, k) of one shape, got {tuple(f.shape)} and "
                         f"{tuple(g.shape)}")
    if f.shape[0] == 0:
        raise ValueError("f and g hold no rows (batch size 0): the objective is undefined")
    return _SoftHGR.apply(f, g)


class _SoftHGR(torch.autograd.Function):
    """Eq. 3 with n = B, F, G the centred batches and S_F = F^T F, S_G = G^T G:
    (1/n) sum F * G - 1/(2 n^2) sum S_F * S_G, whose gradient is
    d/dF = (G - F S_G / n) / n (and symmetrically), already centred (G and F S_G have
    zero column means), so it is also the gradient w.r.t. the uncentred f. Two GEMMs forward
    and two back, where autograd of the expression takes six and twenty-odd nodes."""

    @staticmethod
    def forward(ctx, f, g):
        n = f.shape[0]
        fc, gc = f - f.mean(0), g - g.mean(0)
        sf, sg = fc.T @ fc, gc.T @ gc
        ctx.save_for_backward(fc, gc, sf, sg)
        return (fc * gc).sum() / n - 0.5 * (sf * sg).sum() / (n * n)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        fc, gc, sf, sg = ctx.saved_tensors
        n = fc.shape[0]
        scale = grad / n
        grad_f = torch.addmm(gc, fc, sg, alpha=-1 / n).mul_(scale) \
            if ctx.needs_input_grad[0] else None
        grad_g = torch.addmm(fc, gc, sf, alpha=-1 / n).mul_(scale) \
            if ctx.needs_input_grad[1] else None
        return grad_f, grad_g


class HScore(nn.Module):
    """Loss = -soft_hgr(f, g) (eq. 3). ``forward(f, target)``: ``target`` is either the
    g-branch output (B, k) or integer labels (B,), mapped to g(y) by a learned table
    (needs ``num_classes`` and ``dim``)."""

    def __init__(self, num_classes: int | None = None, dim: int | None = None) -> None:
        super().__init__()
        self.g = nn.Embedding(num_classes, dim) if num_classes is not None else None
        if self.g is not None:
            nn.init.zeros_(self.g.weight)

    def forward(self, f: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.dtype.is_floating_point:
            return -soft_hgr(f, target)
        if self.g is None:
            raise ValueError("integer labels need HScore(num_classes=..., dim=...)")
        C = self.g.num_embeddings
        if target.numel() and not bool(((target >= 0) & (target < C)).all()):
            raise ValueError(f"target holds labels outside [0, {C}) (num_classes={C}): min "
                             f"{int(target.min())}, max {int(target.max())}")
        return -soft_hgr(f, self.g(target))

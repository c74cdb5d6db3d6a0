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
    """The soft-HGR objective (eq. 3) of paired batches f, g (B, k); differentiable."""
    if f.dim() != 2 or f.shape != g.shape:
        raise ValueError(f"f and g must be (B, k) of one shape, got {tuple(f.shape)} and "
                         f"{tuple(g.shape)}")
    if f.shape[0] == 0:
        raise ValueError("f and g hold no rows (batch size 0): the objective is undefined")
    n = f.shape[0]
    f = f - f.mean(0)
    g = g - g.mean(0)
    cov_f, cov_g = f.T @ f / n, g.T @ g / n
    return (f * g).sum(1).mean() - 0.5 * (cov_f * cov_g).sum()


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

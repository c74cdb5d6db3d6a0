"""``OTLoss``: the JTLN optimal-transport loss between classifier outputs (Lu et al., eq. 7-11)."""

from __future__ import annotations

import torch

from pytransfer.ot import sinkhorn

REDUCTIONS = ("mean", "sum", "none")


class OTLoss(torch.nn.Module):
    """Entropic OT cost <gamma, C> between source and target label distributions.

    ``forward(p_source (B, Ls), p_target (B, Lt))`` solves one problem per row (the source and
    target classifier outputs for the same input) with the fixed class-pair ``cost (Ls, Lt)``
    (e.g. ``pytransfer.mmd.class_pair_mmd``). With ``grad="dual"`` the gradient w.r.t. the
    outputs is the paper's eq. 11, (1/lambda) log u centered, with lambda = 1/eps.
    """

    def __init__(self, cost: torch.Tensor, eps: float = 0.1, max_iter: int = 100,
                 tol: float = 1e-6, grad: str = "dual", reduction: str = "mean",
                 backend: str = "auto") -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.register_buffer("cost", cost)
        self.eps, self.max_iter, self.tol = eps, max_iter, tol
        self.grad, self.reduction, self.backend = grad, reduction, backend

    def forward(self, p_source: torch.Tensor, p_target: torch.Tensor) -> torch.Tensor:
        res = sinkhorn(p_source, p_target, self.cost.to(p_source.dtype), self.eps,
                       max_iter=self.max_iter, tol=self.tol, grad=self.grad,
                       backend=self.backend)
        loss = res.transport_cost
        if self.reduction == "mean":
            return loss.mean()
        return loss.sum() if self.reduction == "sum" else loss

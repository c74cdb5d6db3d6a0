"""``OTLoss``: the JTLN optimal-transport loss between classifier outputs (Lu et al., eq. 7-11)."""

from __future__ import annotations

import warnings

import torch

from pytransfer import _checks
from pytransfer.ot import sinkhorn

REDUCTIONS = ("mean", "sum", "none")


class OTLoss(torch.nn.Module):
    """Entropic OT cost <gamma, C> between source and target label distributions.

    ``forward(p_source (B, Ls), p_target (B, Lt))`` solves one problem per row (the source and
    target classifier outputs for the same input) with the fixed class-pair ``cost (Ls, Lt)``
    (e.g. ``pytransfer.mmd.class_pair_mmd``). With ``grad="dual"`` the gradient w.r.t. the
    outputs is the paper's eq. 11, (1/lambda) log u centered, with lambda = 1/eps.
    The last ``SinkhornResult`` is kept (detached) as ``last_result``; the first forward in
    which some problems stop unconverged at ``max_iter`` warns once, with their count.
    """

    def __init__(self, cost: torch.Tensor, eps: float = 0.1, max_iter: int = 100,
                 tol: float = 1e-6, grad: str = "dual", reduction: str = "mean",
                 backend: str = "auto") -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        _checks.ndim("cost", _checks.floating("cost", _checks.tensor("cost", cost)), (2,))
        _checks.finite("cost", cost)
        _checks.entropic_scale(_checks.positive_float("eps", eps), cost, True)
        self.register_buffer("cost", cost)
        self.last_result, self._warned = None, False
        self.eps, self.max_iter, self.tol = eps, max_iter, tol
        self.grad, self.reduction, self.backend = grad, reduction, backend

    def forward(self, p_source: torch.Tensor, p_target: torch.Tensor) -> torch.Tensor:
        _checks.histograms(p_source, p_target, ("p_source", "p_target"), True)
        if (p_source.shape[1], p_target.shape[1]) != tuple(self.cost.shape):
            raise ValueError(f"p_source (B, {p_source.shape[1]}) and p_target (B, "
                             f"{p_target.shape[1]}) must match cost {tuple(self.cost.shape)}")
        work = torch.float64 if p_source.dtype == torch.float64 else torch.float32  # no half cost
        res = sinkhorn(p_source.to(work), p_target.to(work), self.cost.to(work), self.eps,
                       max_iter=self.max_iter, tol=self.tol, grad=self.grad,
                       backend=self.backend, check_inputs=False)
        self.last_result = type(res)(*(x if x is None else x.detach() for x in res))
        if not self._warned and not bool(res.converged.all()):
            self._warned = True
            warnings.warn(f"OTLoss: {int((~res.converged).sum())} of {res.converged.numel()} "
                          f"Sinkhorn problems did not converge in max_iter={self.max_iter} "
                          f"(tol={self.tol}, eps={self.eps}); raise max_iter or eps",
                          RuntimeWarning, stacklevel=2)
        loss = res.transport_cost
        if self.reduction == "mean":
            return loss.mean()
        return loss.sum() if self.reduction == "sum" else loss

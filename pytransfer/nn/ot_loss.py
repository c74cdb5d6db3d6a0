"""``OTLoss``: the JTLN optimal-transport loss between classifier outputs (Lu et al., eq. 7-11)."""

from __future__ import annotations

import os
import sys
import warnings

import torch

from pytransfer import _checks, _ext
from pytransfer.ot import SinkhornResult, block, sinkhorn
from pytransfer.ot.scaling import AUTO_RANGE, scaling_range
from pytransfer.ot.sinkhorn import MASS_RTOL

REDUCTIONS = ("mean", "sum", "none")
_FAST_DTYPES = (torch.float32, torch.float64)


class OTLoss(torch.nn.Module):
    """Entropic OT cost <gamma, C> between source and target label distributions.

    ``forward(p_source (B, Ls), p_target (B, Lt))`` solves one problem per row (the source and
    target classifier outputs for the same input) with the fixed class-pair ``cost (Ls, Lt)``
    (e.g. ``pytransfer.mmd.class_pair_mmd``). With ``grad="dual"`` the gradient w.r.t. the
    outputs is the paper's eq. 11, (1/lambda) log u centered, with lambda = 1/eps.
    The last ``SinkhornResult`` is kept (detached) as ``last_result``; the first forward in
    which some problems stop unconverged at ``max_iter`` warns once, with their count.

    The common training call (CPU float32/float64, contiguous, grad="dual", the scaling form
    chosen by ``sinkhorn(method="auto")`` and its block kernel) takes a fast path with the same
    checks and results: one C++ call validates the outputs, solves and returns the values and
    the dual gradients (``pytransfer.ot.block``), reduced in the same autograd node (the cost
    is checked when it or eps changes); ``last_result`` is made from the kernel's outputs when
    read, and a call writes over the last call's outputs when nothing else holds them.
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
        self.last_result, self._warned, self._seen = None, False, None
        self.eps, self.max_iter, self.tol = eps, max_iter, tol
        self.grad, self.reduction, self.backend = grad, reduction, backend
        #: dtype -> (the cost buffer it was made from, its version, eps, the (1, n, m) cost,
        #: whether the fast path takes it)
        self._work: dict[torch.dtype, tuple[torch.Tensor, int, float, torch.Tensor, bool]] = {}

    def _work_cost(self, cost: torch.Tensor, dtype: torch.dtype,
                   eps: float) -> tuple[torch.Tensor, bool]:
        """(the cost buffer as a contiguous (1, n, m) ``dtype`` tensor, whether the fast path
        takes it: every entry finite and (max C - min C) / eps within the scaling form's range
        (``sinkhorn(method="auto")``'s choice)), made again when the buffer was replaced or
        modified in place (its version counter) or eps changed; the entropic scale is checked
        for each (``sinkhorn(check_inputs=True)``'s check)."""
        hit = self._work.get(dtype)
        if hit is not None and hit[0] is cost and hit[1] == cost._version and hit[2] == eps:
            return hit[3], hit[4]
        work = cost.detach().to(dtype).reshape(1, *cost.shape).contiguous()
        _checks.entropic_scale(eps, work, True)
        fast = bool(torch.isfinite(work).all()) and scaling_range(work, eps) <= AUTO_RANGE[dtype]
        self._work[dtype] = (cost, cost._version, eps, work, fast)
        return work, fast

    @property
    def last_result(self) -> SinkhornResult | None:
        """The last forward's ``SinkhornResult``, detached; after the fast path, made on first
        read from the kernel's outputs (the objective computed then, from what the kernel
        kept: copies of the inputs, so changing them since does not change it)."""
        last = self._last
        if type(last) is _ext.Outputs:
            objective = block.objective(last, self._last_eps)
            last = self._last = SinkhornResult(last.tensor(6), objective,
                                               *(last.tensor(i) for i in (0, 1, 2, 3, 5)))
        return last

    @last_result.setter
    def last_result(self, value: SinkhornResult | None) -> None:
        self._last = value

    def _settings(self) -> float:
        """eps as a float, after ``sinkhorn``'s checks of eps, max_iter and tol: run again
        whenever one of them was assigned since (the identity of the three objects)."""
        eps, max_iter, tol = self.eps, self.max_iter, self.tol
        seen = self._seen
        if seen is not None and seen[0] is eps and seen[1] is max_iter and seen[2] is tol:
            return seen[3]
        value = _checks.positive_float("eps", eps)
        _checks.positive_int("max_iter", max_iter)
        _checks.nonneg_float("tol", tol)
        vars(self)["_seen"] = (eps, max_iter, tol, value)
        return value

    def _fast(self, p_source: object, p_target: object) -> torch.Tensor | None:
        """The fused path's (reduced) loss, or None where the general path must run (any other
        configuration, and every bad input: the general path names the problem)."""
        cost = self._buffers["cost"]  # self.cost, without Module.__getattr__
        if not (not torch.compiler.is_compiling() and type(p_source) is torch.Tensor
                and type(p_target) is torch.Tensor
                and self.grad == "dual" and p_source.dtype in _FAST_DTYPES
                and p_target.dtype is p_source.dtype and p_source.is_cpu and p_target.is_cpu
                and p_source.dim() == 2 and p_target.dim() == 2
                and p_source.is_contiguous() and p_target.is_contiguous()
                and not cost.requires_grad and cost.is_cpu
                and _ext.unavailable() is None):
            return None
        (B, n), (Bt, m) = p_source.shape, p_target.shape
        if B != Bt or B == 0 or (n, m) != cost.shape:
            return None
        backend = self.backend
        if backend == "auto":
            backend = os.environ.get("PYTRANSFER_BACKEND", "auto")
        if (backend not in ("auto", "cpu")
                or block.use_gemm_loop(B, n, m, p_source.dtype, torch.get_num_threads())):
            return None
        eps = self._settings()
        cost, fast = self._work_cost(cost, p_source.dtype, eps)
        if not fast:
            return None  # a non-finite cost, or the log domain
        # (a bad value in the outputs: no solve, and the general path names it)
        loss, outs, grads = block.transport_cost(
            p_source, p_target, cost, eps, self.max_iter, self.tol, self.reduction,
            into=self._spent(), check_rtol=_MASS_RTOL[p_source.dtype])
        if loss is not None:  # (the last_result, made when read)
            vars(self).update(_last=outs, _last_grads=grads, _last_eps=eps)
        return loss

    def _spent(self) -> tuple[_ext.Outputs | None, _ext.Outputs | None]:
        """The last fast call's two allocations of kernel outputs, each if nothing but this
        module holds it any more (else None): the values, while its ``last_result`` was never
        read (reading it makes views of them); the dual gradients, once its autograd graph is
        released (the graph's node holds them for the backward). The next call writes over
        them instead of new allocations: at B=512, 78x22 the first is 0.6 MB, whose fresh
        pages cost ~50 page faults per call (~1.7 us each on the VM the benchmarks ran on)."""
        last, grads = vars(self).get("_last"), vars(self).get("_last_grads")
        # references: the module's attribute, the local and getrefcount's argument (CPython)
        return (last if type(last) is _ext.Outputs and sys.getrefcount(last) == 3 else None,
                grads if grads is not None and sys.getrefcount(grads) == 3 else None)

    def forward(self, p_source: torch.Tensor, p_target: torch.Tensor) -> torch.Tensor:
        loss = self._fast(p_source, p_target)
        if loss is None:
            _checks.histograms(p_source, p_target, ("p_source", "p_target"), True)
            if (p_source.shape[1], p_target.shape[1]) != tuple(self.cost.shape):
                raise ValueError(f"p_source (B, {p_source.shape[1]}) and p_target (B, "
                                 f"{p_target.shape[1]}) must match cost "
                                 f"{tuple(self.cost.shape)}")
            work = torch.float64 if p_source.dtype == torch.float64 else torch.float32
            res = sinkhorn(p_source.to(work), p_target.to(work), self.cost.to(work), self.eps,
                           max_iter=self.max_iter, tol=self.tol, grad=self.grad,
                           backend=self.backend, check_inputs=False)
            vars(self)["_last"] = type(res)(
                *(x.detach() if x is not None and x.requires_grad else x for x in res))
            loss = res.transport_cost
            if self.reduction == "mean":
                loss = loss.mean()
            elif self.reduction == "sum":
                loss = loss.sum()
        # tol=0 asks for exactly max_iter iterations: nothing to warn about
        if self.tol > 0 and not self._warned:
            last = self._last  # the fast path's converged flags without the whole last_result
            if not (last.all(5) if type(last) is _ext.Outputs else bool(last.converged.all())):
                converged = self.last_result.converged
                self._warned = True
                warnings.warn(f"OTLoss: {int((~converged).sum())} of {converged.numel()} "
                              f"Sinkhorn problems did not converge in max_iter={self.max_iter} "
                              f"(tol={self.tol}, eps={self.eps}); raise max_iter or eps",
                              RuntimeWarning, stacklevel=2)
        return loss


#: the mass check's relative tolerance per dtype, as ``sinkhorn``'s and ``_checks.histograms``'
_MASS_RTOL = {d: max(MASS_RTOL, 4 * torch.finfo(d).eps) for d in _FAST_DTYPES}

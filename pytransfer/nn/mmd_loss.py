"""``MKMMDLoss``: the MK-MMD domain loss (DAN; JTLN eq. 12-14; the Lautum paper's 19-kernel
baseline) as a module over ``pytransfer.mmd.mk_mmd``."""

from __future__ import annotations

import torch

from pytransfer.mmd import KernelSpec, gaussian_kernels, mk_mmd, optimize_kernel_weights
from pytransfer.mmd.distributed import global_bandwidth, global_mk_mmd, global_weights
from pytransfer.mmd.functional import check_features


class MKMMDLoss(torch.nn.Module):
    """``forward(xs (n, d), xt (n, d))`` -> squared MK-MMD (scalar).

    kernels: ``KernelSpec`` (default ``gaussian_kernels(19)``); estimator: ``"linear"`` or
    ``"quadratic"``; weights: fixed beta (default uniform) or ``optimize_weights=True`` to
    re-solve the test-power weights on every batch (Gretton et al. 2012, DAN; detached, kept
    in ``last_weights``). ``distributed=True``: under torch.distributed the loss and its
    gradients are those of the global batch (the concatenation of the ranks' batches):
    bandwidth moments, estimator sums and weight statistics are all-reduced.
    """

    def __init__(self, kernels: KernelSpec | None = None, estimator: str = "linear",
                 optimize_weights: bool = False, weights: torch.Tensor | None = None,
                 reg: float = 1e-3, drop_last: bool = False, distributed: bool = False,
                 group=None, backend: str = "auto", check_inputs: bool = True) -> None:
        super().__init__()
        if optimize_weights and weights is not None:
            raise ValueError("pass either weights or optimize_weights=True, not both")
        self.kernels = gaussian_kernels() if kernels is None else kernels
        self.estimator, self.optimize_weights, self.reg = estimator, optimize_weights, reg
        self.drop_last, self.distributed, self.group = drop_last, distributed, group
        self.backend, self.check_inputs = backend, check_inputs
        self.weights = weights
        self.last_weights: torch.Tensor | None = None

    def forward(self, xs: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
        if not self.distributed:
            weights = self.weights
            if self.optimize_weights:
                weights = optimize_kernel_weights(xs.detach(), xt.detach(), self.kernels,
                                                  reg=self.reg, drop_last=self.drop_last,
                                                  check_inputs=self.check_inputs)
                self.last_weights = weights
            return mk_mmd(xs, xt, kernels=self.kernels, estimator=self.estimator,
                          drop_last=self.drop_last, weights=weights, backend=self.backend,
                          check_inputs=self.check_inputs)
        check_features(xs, xt, self.check_inputs)
        n = xs.shape[0]
        if self.estimator == "linear" and n % 2 and self.drop_last:
            xs, xt = xs[: n - 1], xt[: n - 1]
        base = self.kernels.base
        if isinstance(base, str):
            base = global_bandwidth(xs, xt, self.group)
        spec = KernelSpec(self.kernels.multipliers, base)
        weights = self.weights
        if self.optimize_weights:
            weights = global_weights(xs, xt, spec, torch.as_tensor(base, dtype=torch.float64),
                                     self.reg, self.group)
            self.last_weights = weights
        return global_mk_mmd(xs, xt, spec, weights, self.estimator, self.backend,
                             self.check_inputs, self.group)

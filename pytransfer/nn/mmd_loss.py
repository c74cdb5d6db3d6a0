"""``MKMMDLoss``: the MK-MMD domain loss (DAN; JTLN eq. 12-14; the Lautum paper's 19-kernel
baseline) as a module over ``pytransfer.mmd.mk_mmd``."""

from __future__ import annotations

import torch

from pytransfer import _ext
from pytransfer._autograd import direct_apply
from pytransfer.mmd import KernelSpec, gaussian_kernels, mk_mmd, optimize_kernel_weights
from pytransfer.mmd import _ops as mmd_ops
from pytransfer.mmd.distributed import global_bandwidth, global_mk_mmd, global_weights
from pytransfer.mmd.functional import check_features
from pytransfer.mmd.spec import bandwidth, bandwidth_cpu, resolve


class _LinearCPU(torch.autograd.Function):
    """``mmd_ops.mmd_linear`` with constant gammas and weights, without the dispatcher: the
    plain functions behind its C++ forward (h, coef) and backward custom ops (eager, CPU;
    the custom ops stay for torch.compile and opcheck)."""

    @staticmethod
    def forward(ctx, xs, xt, gammas, weights, weights64, square):
        h, coef = mmd_ops.linear_fwd_sums(xs, xt, gammas, weights, square)
        ctx.save_for_backward(xs, xt, coef)
        return torch.dot(weights64, h).div_(coef.shape[0]).to(xs.dtype)

    @staticmethod
    def backward(ctx, grad):
        xs, xt, coef = ctx.saved_tensors
        gxs, gxt = mmd_ops.linear_bwd(xs, xt, coef, 2.0 * float(grad) / coef.shape[0])
        return gxs, gxt, None, None, None, None


_apply_linear = direct_apply(_LinearCPU)


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
        self._constants: dict[torch.dtype, tuple] = {}

    def _fast_path(self, xs: object, xt: object) -> bool:
        """The common training call (linear estimator, fixed uniform weights, bandwidth from
        the batch, even n, CPU float32/float64, eager): per-call work is the C++ moments pass
        and the two C++ kernels; other calls (and every error) go through ``mk_mmd``."""
        return (isinstance(xs, torch.Tensor) and isinstance(xt, torch.Tensor)
                and self.estimator == "linear" and not self.distributed
                and not self.optimize_weights and self.weights is None
                and isinstance(self.kernels, KernelSpec) and isinstance(self.kernels.base, str)
                and self.backend in ("auto", "cpu") and _ext.unavailable() is None
                and not torch.compiler.is_compiling() and xs.device.type == "cpu"
                and xt.device.type == "cpu" and xs.dtype in (torch.float32, torch.float64)
                and xt.dtype == xs.dtype and xs.dim() == 2 and xs.shape == xt.shape
                and xs.shape[0] >= 2 and xs.shape[0] % 2 == 0)

    def _linear_cpu(self, xs: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
        base = bandwidth_cpu(xs, xt)  # the C++ moments pass: finite iff every entry is finite
        constants = self._constants.get(xs.dtype)
        if constants is None:  # gammas at base 1, weights, squaring flags, dtype limits
            U = self.kernels.num
            uniform = torch.full((U,), 1.0 / U, dtype=xs.dtype)
            unit, weights, square = resolve(self.kernels, uniform,
                                            torch.ones((), dtype=xs.dtype), xs.dtype)
            info = torch.finfo(xs.dtype)
            constants = self._constants[xs.dtype] = (unit, weights, weights.double(), square,
                                                     info.max, info.tiny ** 0.5)
        unit, weights, weights64, square, largest, smallest = constants
        if not base <= largest:  # NaN/Inf in an input, or a bandwidth overflowing the dtype
            bandwidth(xs, xt)  # names the bad input or the overflow
            raise ValueError(f"the kernel bandwidth {base:.3g} is not finite in {xs.dtype}")
        # as resolve: a degenerate batch (base 0) takes the smallest safe base
        gammas = unit / max(base, smallest)
        return _apply_linear(xs, xt, gammas, weights, weights64, square)

    def forward(self, xs: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
        if self._fast_path(xs, xt):
            return self._linear_cpu(xs, xt)
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

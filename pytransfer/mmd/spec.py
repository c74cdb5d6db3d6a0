"""Gaussian kernel families for MK-MMD and their bandwidth (DESIGN.md section 5).

sigma_u^2 = multiplier_u * base, k_u(a, b) = exp(-||a - b||^2 / (2 sigma_u^2)) (JTLN eq. 13,
DAN section 3). ``base="mean"`` is the mean pairwise squared distance of the pooled batch,
mean_{i != j} ||x_i - x_j||^2 = 2N/(N-1) (mean ||x||^2 - ||mean x||^2), computed in O(N d)
from moments and detached (as in DAN).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pytransfer import _checks, _ext

Base = str | float | torch.Tensor

#: squarings per exp along a run of power-of-two bandwidths: the rounding error of the exp is
#: doubled by each squaring, so runs restart with a fresh exp (<= 8 ulp float32, 128 ulp float64)
MAX_SQUARINGS = {torch.float32: 3, torch.float64: 7}


@dataclass(frozen=True)
class KernelSpec:
    """U Gaussian kernels sigma_u^2 = multipliers[u] * base (see ``gaussian_kernels``)."""

    multipliers: tuple[float, ...]
    base: Base = "mean"

    def __post_init__(self) -> None:
        mult = tuple(self.multipliers)
        if not mult:
            raise ValueError("multipliers must be non-empty")
        for v in mult:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError(f"multipliers must be floats, got {type(v).__name__}")
            if not math.isfinite(v) or v <= 0:
                raise ValueError(f"multipliers must be finite and > 0, got {v}")
        object.__setattr__(self, "multipliers", tuple(float(v) for v in mult))
        base = self.base
        if isinstance(base, str):
            _checks.choice("base", base, ("mean",))
        elif isinstance(base, torch.Tensor):
            if base.numel() != 1:
                raise ValueError(f"base must be a scalar tensor, got shape {tuple(base.shape)}")
            _checks.floating("base", base)
        else:
            _checks.positive_float("base", base)

    @property
    def num(self) -> int:
        return len(self.multipliers)


def gaussian_kernels(
    num: int = 19, *, base: Base = "mean", multipliers: Sequence[float] | None = None
) -> KernelSpec:
    """``num`` Gaussian kernels. Default multipliers 2^k, k = -(num//2), ..., num - 1 - num//2
    (DAN's powers of two around the mean pairwise distance); ``gaussian_kernels(19)`` is the
    Lautum paper's 19-kernel MK-MMD baseline. ``multipliers`` must hold exactly ``num`` values.
    """
    _checks.positive_int("num", num)
    if multipliers is None:
        multipliers = [2.0 ** k for k in range(-(num // 2), num - num // 2)]
    elif len(multipliers) != num:
        raise ValueError(f"multipliers must hold num={num} values, got {len(multipliers)}")
    return KernelSpec(tuple(multipliers), base)


def centered_sq(xs: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
    """sum_i ||x_i - mean||^2 over the pooled rows, float64, detached. On CPU one pass of the
    C++ kernel with float64 accumulators about the shift xs[0] (sum ||z||^2 - ||sum z||^2 / N,
    z = x - xs[0]: the common offset is removed before squaring); elsewhere two torch passes."""
    xs, xt = xs.detach(), xt.detach()
    N = xs.shape[0] + xt.shape[0]
    if (xs.device.type == "cpu" and _ext.unavailable() is None and not torch.compiler.is_compiling()
            and xs.dtype in (torch.float32, torch.float64)):
        shift = xs[0].contiguous()
        colsum = torch.zeros(xs.shape[1], dtype=torch.float64)
        sq = torch.zeros(1, dtype=torch.float64)
        for x in (xs.contiguous(), xt.contiguous()):
            _ext._C.mmd_moments(str(x.dtype).removeprefix("torch."), x.data_ptr(), x.shape[0],
                                x.shape[1], shift.data_ptr(), colsum.data_ptr(), sq.data_ptr(),
                                torch.get_num_threads())
        return sq[0] - colsum.square().sum() / N
    x = torch.cat([xs, xt]).double()
    return (x - x.mean(0)).square().sum()


def bandwidth_from_moments(count: int | torch.Tensor, centered_sq: torch.Tensor) -> torch.Tensor:
    """mean_{i != j} ||x_i - x_j||^2 = 2 / (N - 1) sum_i ||x_i - mean||^2."""
    return 2 * centered_sq / (count - 1)


def bandwidth(xs: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
    """Mean pairwise squared distance of the pooled batch [xs; xt], O(N d), detached.

    Equal to 2N/(N-1) (mean ||x||^2 - ||mean x||^2); evaluated from centred moments in float64
    (no cancellation for features with a large common offset). Returns xs's dtype.
    """
    count = xs.shape[0] + xt.shape[0]
    if count < 2:
        raise ValueError("bandwidth needs at least 2 pooled rows")
    return bandwidth_from_moments(count, centered_sq(xs, xt)).to(xs.dtype)


def resolve(
    spec: KernelSpec, weights: torch.Tensor, base: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(gammas, weights, square flags) in evaluation order: bandwidths from wide to narrow, so
    each kernel in a run of halving bandwidths is the square of the previous one."""
    order = sorted(range(spec.num), key=lambda u: -spec.multipliers[u])
    mult = [spec.multipliers[u] for u in order]
    square, run = [0] * spec.num, 0
    limit = MAX_SQUARINGS.get(dtype, 3)
    for u in range(1, spec.num):
        if mult[u - 1] == 2 * mult[u] and run < limit:
            square[u], run = 1, run + 1
        else:
            run = 0
    # Degenerate batch (all points equal, base 0): any positive base gives the same kernels.
    base = base.detach().to(dtype).reshape(()).clamp_min(torch.finfo(dtype).tiny ** 0.5)
    m = torch.tensor(mult, dtype=dtype, device=base.device)
    gammas = 1.0 / (2.0 * m * base)
    idx = torch.tensor(order, device=weights.device)
    return gammas, weights[idx], torch.tensor(square, dtype=torch.int32, device=base.device)

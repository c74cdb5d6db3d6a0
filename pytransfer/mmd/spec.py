"""Gaussian kernel families for MK-MMD and their bandwidth.

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


def _moments_cpu(xs: torch.Tensor, xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum ||z||^2 (1,), sum z (d,)) over the pooled rows, z = x - xs[0], float64: one pass
    of the C++ kernel per input."""
    (ns, d), nt = xs.shape, xt.shape[0]
    colsum, sq = _ext.zeros(torch.float64, d), _ext.zeros(torch.float64, 1)
    source = _ext.src(xs, ns, d)
    # the shift xs[0]: the kernel reads it at the start of xs itself (no view made; an empty
    # xs has no first row: indexing it raises, as it always did)
    shift = source if ns else _ext.src(xs.detach()[0], d)
    for x, rows in ((source, ns), (_ext.src(xt, nt, d), nt)):
        _ext.call("mmd_moments", xs.dtype, x, rows, d, shift, colsum, sq)
    return sq.tensor, colsum.tensor


def centered_sq(xs: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
    """sum_i ||x_i - mean||^2 over the pooled rows, float64, detached. On CPU one pass of the
    C++ kernel with float64 accumulators about the shift xs[0] (sum ||z||^2 - ||sum z||^2 / N,
    z = x - xs[0]: the common offset is removed before squaring); elsewhere two torch passes."""
    xs, xt = xs.detach(), xt.detach()
    N = xs.shape[0] + xt.shape[0]
    if (xs.device.type == "cpu" and _ext.unavailable() is None and not torch.compiler.is_compiling()
            and xs.dtype in (torch.float32, torch.float64)):
        sq, colsum = _moments_cpu(xs, xt)
        return sq[0] - colsum.square().sum() / N
    x = torch.cat([xs, xt]).double()
    return (x - x.mean(0)).square().sum()


def bandwidth_cpu(xs: torch.Tensor, xt: torch.Tensor) -> float:
    """:func:`bandwidth` in float64 as a Python float, without its checks, for CPU
    float32/float64 (n, d) inputs with the extension built (C++ moments, one torch op): not
    finite when an input is not (or the distances overflow float64)."""
    N = xs.shape[0] + xt.shape[0]
    sq, colsum = _moments_cpu(xs, xt)  # (reads the data: inputs requiring grad need no detach)
    return 2 * (sq.item() - torch.dot(colsum, colsum).item() / N) / (N - 1)


def bandwidth_from_moments(count: int | torch.Tensor, centered_sq: torch.Tensor) -> torch.Tensor:
    """mean_{i != j} ||x_i - x_j||^2 = 2 / (N - 1) sum_i ||x_i - mean||^2."""
    return 2 * centered_sq / (count - 1)


def check_features(xs: object, xt: object, check_inputs: bool,
                   names: tuple[str, str] = ("xs", "xt")) -> torch.device:
    """Shared checks of two (n, d) feature batches: type, dtype, rank, width, values."""
    ns, nt = names
    _checks.floating(ns, _checks.tensor(ns, xs))
    _checks.floating(nt, _checks.tensor(nt, xt))
    _checks.ndim(ns, xs, (2,))
    _checks.ndim(nt, xt, (2,))
    device = _checks.same_device(**{ns: xs, nt: xt})
    _checks.same_dtype(**{ns: xs, nt: xt})
    if xs.shape[1] != xt.shape[1]:
        raise ValueError(f"{ns} and {nt} must have the same feature dimension, got "
                         f"{xs.shape[1]} and {xt.shape[1]}")
    if check_inputs:
        for name, x in ((ns, xs), (nt, xt)):
            _checks.finite(name, x)
    return device


def pooled_bandwidth(xs: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
    """:func:`bandwidth` in float64, for validated inputs."""
    count = xs.shape[0] + xt.shape[0]
    if count < 2:
        raise ValueError("bandwidth needs at least 2 pooled rows")
    return bandwidth_from_moments(count, centered_sq(xs, xt))


def bandwidth(xs: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
    """Mean pairwise squared distance of the pooled batch [xs; xt], O(N d), detached.

    Equal to 2N/(N-1) (mean ||x||^2 - ||mean x||^2); evaluated from centred moments in float64
    (no cancellation for features with a large common offset). Returns xs's dtype; a value
    that does not fit it (float32 features beyond ~1e19) is an error: ``mk_mmd`` itself works
    in units of the bandwidth and is scale invariant.
    """
    check_features(xs, xt, True)
    base = pooled_bandwidth(xs, xt)
    out = base.to(xs.dtype)
    if not bool(torch.isfinite(out)):
        raise ValueError(f"the bandwidth {float(base):.3g} overflows {xs.dtype}; pass float64 "
                         f"features")
    return out


def standardize(xs: torch.Tensor, xt: torch.Tensor, base: torch.Tensor, check_inputs: bool
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(zs, zt, 1): the features centred on their pooled mean, in units of sqrt(base).

    Every kernel depends on the data only through ||x_i - x_j||^2 / base, so the estimates are
    unchanged, while distances stay O(1) at any feature scale (1e-20 and 1e20 alike) and the
    GEMM identity ||a||^2 + ||b||^2 - 2 a.b loses no digits to a common offset. ``base`` is
    float64 and detached (a constant for the gradient, as in DAN); base 0 (all points equal)
    keeps the unit scale.
    """
    base = base.detach().double().reshape(())
    if check_inputs and not bool(torch.isfinite(base)):
        raise ValueError("the kernel bandwidth overflows float64: the features are too large "
                         "(their squared distances exceed ~1e308)")
    scale = torch.where(base > 0, base.rsqrt(), torch.ones_like(base)).to(xs.dtype)
    n = xs.shape[0]
    _checks.fits(f"the ({n + xt.shape[0]}, {xs.shape[1]}) standardised features",
                 (n + xt.shape[0]) * xs.shape[1] * xs.element_size(), xs.device)
    zs, zt = _Standardised.apply(xs, xt, scale)
    return zs, zt, torch.ones((), dtype=torch.float64, device=xs.device)


class _Standardised(torch.autograd.Function):
    """(zs, zt) = the rows of (cat(xs, xt) * scale - mean) (the mean detached, as the scale):
    one new (n + m, d) tensor, computed in place, and the gradients scale * (gzs, gzt)
    straight to xs and xt. (Through autograd's cat, slices, mul and sub, the backward held
    up to four (n + m, d) gradient buffers at once: peak memory 3.5-4x the inputs for the
    linear estimator's forward + backward, 2.5x this way.)"""

    @staticmethod
    def forward(ctx, xs, xt, scale):
        x = torch.cat([xs, xt]).mul_(scale)
        x = x.sub_(x.mean(0))
        ctx.scale = scale
        n = xs.shape[0]
        return x[:n], x[n:]

    @staticmethod
    def backward(ctx, gzs, gzt):
        return gzs * ctx.scale, gzt * ctx.scale, None


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

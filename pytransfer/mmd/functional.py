"""``pytransfer.mmd.mk_mmd``: multi-kernel MMD between two feature batches
(JTLN eq. 12-14; Gretton et al. 2012; DAN, Long et al. 2015)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pytransfer import _checks, _dispatch
from pytransfer.mmd import _ops
from pytransfer.mmd.spec import (
    KernelSpec,
    check_features,
    gaussian_kernels,
    pooled_bandwidth,
    resolve,
    standardize,
)

ESTIMATORS = ("linear", "quadratic")
WEIGHT_SUM_RTOL = 1e-5


def check_kernels(kernels: object) -> KernelSpec:
    if kernels is None:
        return gaussian_kernels()
    if not isinstance(kernels, KernelSpec):
        raise TypeError(f"kernels must be a KernelSpec (see gaussian_kernels), got "
                        f"{type(kernels).__name__}")
    return kernels


def check_weights(weights: object, U: int, like: torch.Tensor, check_inputs: bool) -> torch.Tensor:
    """beta (U,) in like's dtype/device: non-negative, finite, summing to 1 (JTLN eq. 13)."""
    if weights is None:
        return torch.full((U,), 1.0 / U, dtype=like.dtype, device=like.device)
    if not isinstance(weights, torch.Tensor):
        weights = torch.as_tensor(weights, dtype=like.dtype)
    _checks.floating("weights", weights)
    if weights.shape != (U,):
        raise ValueError(f"weights must have shape ({U},) (one per kernel), got "
                         f"{tuple(weights.shape)}")
    weights = weights.to(dtype=like.dtype, device=like.device)
    if check_inputs:
        _checks.finite("weights", weights)
        _checks.nonnegative("weights", weights)
        total = float(weights.detach().sum())
        if abs(total - 1.0) > WEIGHT_SUM_RTOL:
            raise ValueError(f"weights must sum to 1 (a convex combination, JTLN eq. 13), got "
                             f"sum {total:.6g}")
    return weights


def base_value(spec: KernelSpec, xs: torch.Tensor, xt: torch.Tensor,
               check_inputs: bool) -> torch.Tensor:
    """The kernels' base (sigma_u^2 = multiplier_u * base) in float64, detached."""
    if isinstance(spec.base, str):
        return pooled_bandwidth(xs, xt)
    if isinstance(spec.base, torch.Tensor):
        base = spec.base.detach().to(device=xs.device, dtype=torch.float64)
        if check_inputs and not bool(torch.isfinite(base).all() & (base > 0).all()):
            raise ValueError(f"base must be finite and > 0, got {float(base)}")
        return base
    return torch.tensor(spec.base, dtype=torch.float64, device=xs.device)


def mk_mmd(
    xs: torch.Tensor,
    xt: torch.Tensor,
    *,
    kernels: KernelSpec | None = None,
    estimator: str = "linear",
    drop_last: bool = False,
    weights: torch.Tensor | Sequence[float] | None = None,
    backend: str = "auto",
    check_inputs: bool = True,
) -> torch.Tensor:
    """Squared MK-MMD d_k^2(xs, xt) with k = sum_u beta_u k_u (JTLN eq. 12-13).

    Args:
        xs: (n, d) source features; xt: (m, d) target features (float32/float64; float16 and
            bfloat16 are upcast to float32).
        kernels: ``KernelSpec`` (default ``gaussian_kernels(19)``: sigma_u^2 = 2^k * mean
            pairwise squared distance of the pooled batch, k = -9..9, detached).
        estimator: ``"linear"``: (2/n) sum_i g(z_i) over quad-tuples
            z_i = (xs_{2i-1}, xs_{2i}, xt_{2i-1}, xt_{2i}), g = k(s, s') + k(t, t') - k(s, t')
            - k(s', t) (JTLN eq. 14), m = n, O(n d); ``"quadratic"``: the unbiased U-statistic
            over all pairs (Gretton et al. 2012, eq. 3), tiled, O((n + m)^2 d).
        drop_last: linear estimator with odd n: ignore the last row of each batch.
        weights: beta (U,), non-negative, summing to 1 (default uniform; see
            ``optimize_kernel_weights``). Differentiable.
        backend: ``"auto" | "reference" | "cpu" | "triton"``.
        check_inputs: value checks (NaN/Inf, weights, base); they need a host sync.

    The features are evaluated in units of sqrt(base), centred on their pooled mean (the same
    kernels), so the estimate is scale invariant and a common offset costs no precision.
    Returns a scalar (the estimate can be negative: both estimators are unbiased).
    Gradients flow to xs, xt and weights; the bandwidths are constants.
    """
    device = check_features(xs, xt, check_inputs)
    _checks.choice("estimator", estimator, ESTIMATORS)
    spec = check_kernels(kernels)
    n, m = xs.shape[0], xt.shape[0]
    if estimator == "linear":
        if n != m:
            raise ValueError(f"the linear estimator pairs rows: xs and xt must have the same "
                             f"batch size, got {n} and {m}")
        if n < 2:
            raise ValueError(f"the linear estimator needs n >= 2 rows per batch, got {n}")
        if n % 2:
            if not drop_last:
                raise ValueError(f"the linear estimator needs an even batch size, got n={n}; "
                                 f"pass drop_last=True to ignore the last row")
            xs, xt = xs[: n - 1], xt[: n - 1]
    elif n < 2 or m < 2:
        raise ValueError(f"the quadratic estimator needs >= 2 rows in each batch, got n={n}, "
                         f"m={m}")
    if xs.dtype in (torch.float16, torch.bfloat16):
        xs, xt = xs.float(), xt.float()
    w = check_weights(weights, spec.num, xs, check_inputs)
    xs, xt, base = standardize(xs, xt, base_value(spec, xs, xt, check_inputs), check_inputs)
    gammas, w, square = resolve(spec, w, base, xs.dtype)
    op = _ops.OP_LINEAR if estimator == "linear" else _ops.OP_QUADRATIC
    _, fn = _dispatch.resolve(op, backend, device.type)
    return fn(xs, xt, gammas, w, square)[0]

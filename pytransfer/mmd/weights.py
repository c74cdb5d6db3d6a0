"""Kernel weights that maximise the linear-time test power (Gretton et al. 2012, section 4;
DAN, Long et al. 2015, eq. 7): beta* = argmax_{beta >= 0, sum beta = 1} d^T beta /
sqrt(beta^T (Q + reg I) beta), d the per-kernel linear MMD estimates, Q their covariance over
quad-tuples.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from pytransfer.mmd.functional import base_value, check_features, check_kernels
from pytransfer.mmd.reference import linear_terms
from pytransfer.mmd.spec import KernelSpec

MAX_SWEEPS = 10000


def tuple_stats(xs: torch.Tensor, xt: torch.Tensor, gammas: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(count, sum_i g(z_i) (U,), sum_i g(z_i) g(z_i)^T (U, U)) in float64, detached: the
    mergeable statistics of d and Q (all-reduced under torch.distributed)."""
    with torch.no_grad():
        g = linear_terms(xs.double(), xt.double(), gammas.double())
    return torch.tensor(float(g.shape[0]), dtype=torch.float64, device=g.device), g.sum(0), g.T @ g


def solve_weights(count: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor, reg: float
                  ) -> torch.Tensor:
    """beta* from the statistics of ``tuple_stats``.

    The ratio is scale-free on the cone beta >= 0, and its maximiser there is the solution of
    the strictly convex problem min_{beta >= 0} beta^T A beta / 2 - d^T beta (A = Q + reg I;
    the KKT conditions coincide), solved by exact coordinate descent and normalised to sum 1.
    If no kernel has d_u > 0 the ratio is not positive anywhere: the single kernel with the
    largest d_u / sqrt(A_uu) is returned. Stopping at ``MAX_SWEEPS`` unconverged warns.
    """
    n = float(count)
    d = (s1 / n).cpu().numpy()
    Q = (s2.cpu().numpy() - n * np.outer(d, d)) / max(n - 1.0, 1.0)
    A = Q + reg * np.eye(d.size)
    beta = np.zeros_like(d)
    if (d > 0).any():
        for _ in range(MAX_SWEEPS):
            change = 0.0
            for u in range(d.size):
                new = max(0.0, beta[u] - (A[u] @ beta - d[u]) / A[u, u])
                change = max(change, abs(new - beta[u]))
                beta[u] = new
            if change <= 1e-13 * max(beta.max(), 1e-300):
                break
        else:
            warnings.warn(f"optimize_kernel_weights: coordinate descent stopped after "
                          f"MAX_SWEEPS={MAX_SWEEPS} sweeps, unconverged (last change "
                          f"{change:.3g}); the weights may be suboptimal", RuntimeWarning,
                          stacklevel=3)
    if beta.sum() <= 0:
        beta = np.zeros_like(d)
        beta[int(np.argmax(d / np.sqrt(np.diag(A))))] = 1.0
    return torch.as_tensor(beta / beta.sum(), dtype=torch.float64)


def optimize_kernel_weights(
    xs: torch.Tensor, xt: torch.Tensor, kernels: KernelSpec | None = None, *, reg: float = 1e-3,
    drop_last: bool = False, check_inputs: bool = True,
) -> torch.Tensor:
    """Test-power-optimal kernel weights beta (U,) on the simplex, in ``kernels``' order and
    xs's dtype and device (detached; pass them as ``mk_mmd(..., weights=beta)``).

    Uses the linear-time quad-tuples of (xs, xt) (same batch rules as
    ``mk_mmd(estimator="linear")``); reg >= 0 regularises Q (DAN: Q + reg I).
    """
    from pytransfer import _checks

    check_features(xs, xt, check_inputs)
    _checks.nonneg_float("reg", reg)
    spec = check_kernels(kernels)
    n = xs.shape[0]
    if n != xt.shape[0] or n < 4:
        raise ValueError(f"optimize_kernel_weights needs xs and xt of one batch size n >= 4, "
                         f"got {n} and {xt.shape[0]}")
    if n % 2:
        if not drop_last:
            raise ValueError(f"the linear estimator needs an even batch size, got n={n}; pass "
                             f"drop_last=True to ignore the last row")
        xs, xt = xs[: n - 1], xt[: n - 1]
    base = base_value(spec, xs, xt, check_inputs).double()
    gammas = 1.0 / (2.0 * torch.tensor(spec.multipliers, dtype=torch.float64,
                                       device=xs.device) * base)
    beta = solve_weights(*tuple_stats(xs, xt, gammas), reg)
    return beta.to(dtype=xs.dtype, device=xs.device)

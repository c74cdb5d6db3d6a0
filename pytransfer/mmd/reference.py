"""Plain-PyTorch MK-MMD: the specification in code.

Kernels k_u(a, b) = exp(-gamma_u ||a - b||^2) with gamma_u = 1 / (2 sigma_u^2), combined as
k = sum_u beta_u k_u (JTLN eq. 13; Gretton et al. 2012). Differentiable, readable, and
memory-hungry on purpose: the fused backends must agree with these formulas.
"""

from __future__ import annotations

import torch


def sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(n, m) squared distances ||a_i - b_j||^2 by one GEMM, clamped at 0."""
    d = a.square().sum(-1)[:, None] + b.square().sum(-1)[None, :] - 2 * a @ b.T
    return d.clamp_min(0)


def linear_terms(xs: torch.Tensor, xt: torch.Tensor, gammas: torch.Tensor) -> torch.Tensor:
    """(n/2, U) per-kernel quad-tuple values g_u(z_i), JTLN eq. 14 / DAN eq. (5).

    z_i = (xs_{2i-1}, xs_{2i}, xt_{2i-1}, xt_{2i}) (1-based), g = k(s, s') + k(t, t')
    - k(s, t') - k(s', t).
    """
    s, s2, t, t2 = xs[0::2], xs[1::2], xt[0::2], xt[1::2]

    def k(a, b):
        return torch.exp(-(a - b).square().sum(-1, keepdim=True) * gammas)

    return k(s, s2) + k(t, t2) - k(s, t2) - k(s2, t)


def mmd_linear_reference(
    xs: torch.Tensor, xt: torch.Tensor, gammas: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(d^2, per-kernel estimates h (U,)): d^2 = (2/n) sum_i g(z_i) = sum_u beta_u h_u."""
    h = linear_terms(xs, xt, gammas).mean(0)
    return (weights * h).sum(), h


def quadratic_terms(xs: torch.Tensor, xt: torch.Tensor, gammas: torch.Tensor) -> torch.Tensor:
    """(U,) unbiased U-statistics per kernel (Gretton et al. 2012, eq. 3), all pairs at once:
    mean_{i != j} k(s_i, s_j) + mean_{i != j} k(t_i, t_j) - 2 mean_{i, j} k(s_i, t_j)."""
    n, m = xs.shape[0], xt.shape[0]

    def kern(a, b):
        return torch.exp(-sq_dists(a, b)[..., None] * gammas)

    def off_diag_mean(K, n):
        return (K.sum((0, 1)) - K.diagonal(0, 0, 1).sum(-1)) / (n * (n - 1))

    return (off_diag_mean(kern(xs, xs), n) + off_diag_mean(kern(xt, xt), m)
            - 2 * kern(xs, xt).mean((0, 1)))


def mmd_quadratic_reference(
    xs: torch.Tensor, xt: torch.Tensor, gammas: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(d^2, per-kernel U-statistics h (U,)), d^2 = sum_u beta_u h_u."""
    h = quadratic_terms(xs, xt, gammas)
    return (weights * h).sum(), h

"""The Gaussian Lautum information of two views, from Cholesky factors of one covariance.

The Lautum regularisation paper ("Lautum information based semi-supervised transfer
learning", eq. 2) maximises the Lautum information L(w; x_t) = KL(P_U x P_V || P_UV); its
estimator (Appendix C) is missing from every copy. pytransfer's default is the Lautum
information of jointly Gaussian views with the batch covariance of [u | v]:

    L(U; V) = sum_k [rho_k^2 / (1 - rho_k^2) + 1/2 log(1 - rho_k^2)]

over the canonical correlations rho_k, computed without eigen or singular value
decompositions (slow on GPU; their gradients are unstable when correlations repeat):

    sum_k rho^2 / (1 - rho^2) = tr(S_uu^-1 S_uv S^-1 S_vu),  S = S_vv - S_vu S_uu^-1 S_uv,
    sum_k log(1 - rho^2)      = log det S - log det S_vv.

With L_u = chol(S_uu) and A = L_u^-1 S_uv, S = S_vv - A^T A and the trace is
||chol(S)^-1 A^T||_F^2: three Cholesky factors and two triangular solves of sizes p and q.
"""

from __future__ import annotations

from typing import Protocol

import torch

from pytransfer import _checks, _dispatch
from pytransfer.lautum import _ops

#: a Cholesky pivot below this * dimension * the variance is treated as singular
SINGULAR_RTOL = 1e3 * torch.finfo(torch.float64).eps


class LautumEstimator(Protocol):
    """Anything that maps views u (B, p), v (B, q) to a differentiable scalar estimate of
    the Lautum information L(U; V); ``gaussian_lautum`` is the default."""

    def __call__(self, u: torch.Tensor, v: torch.Tensor, /) -> torch.Tensor: ...


def check_views(u: object, v: object, check_inputs: bool = True) -> None:
    """Errors for views that are not two float (B, p), (B, q) tensors with B > p + q."""
    _checks.floating("u", u)
    _checks.floating("v", v)
    _checks.ndim("u", u, (2,))
    _checks.ndim("v", v, (2,))
    _checks.same_dtype(u=u, v=v)
    _checks.same_device(u=u, v=v)
    (B, p), (Bv, q) = u.shape, v.shape
    if B != Bv:
        raise ValueError(f"u and v must have the same batch size, got u: {B} rows, v: {Bv}")
    if p == 0 or q == 0:
        raise ValueError(f"u and v need at least one column each, got p={p}, q={q}")
    if B <= p + q:
        raise ValueError(f"batch size B={B} must exceed p + q = {p} + {q} = {p + q}: the "
                         f"covariance of [u | v] is singular otherwise (and sample canonical "
                         f"correlations are biased towards 1 unless p + q << B)")
    if check_inputs:
        _checks.finite("u", u)
        _checks.finite("v", v)


def _global_stats(u: torch.Tensor, v: torch.Tensor, backend: str,
                  group) -> tuple[torch.Tensor, ...]:
    """(n, s1, s2) of [u | v] about a common shift; under ``distributed`` summed over the ranks
    with the gradient of the global statistics w.r.t. this rank's rows (others enter as
    constants)."""
    import torch.distributed as dist

    # (the shift need not be the mean exactly: any common shift near it serves, so the sums
    # run in the views' dtype, several times faster than casting each element to float64)
    first = torch.cat([u.new_tensor([u.shape[0]], dtype=torch.float64),
                       u.detach().sum(0).double(), v.detach().sum(0).double()])
    if group is not False:
        dist.all_reduce(first, group=group)
    n, shift = first[0], first[1:] / first[0]
    _, fn = _dispatch.resolve(_ops.OP_STATS, backend, u.device.type)
    s1, s2 = fn(u, v, shift)
    if group is not False:
        flat = torch.cat([s1.detach(), s2.detach().reshape(-1)])
        dist.all_reduce(flat, group=group)
        s1 = s1 + (flat[:s1.numel()] - s1).detach()
        s2 = s2 + (flat[s1.numel():].reshape_as(s2) - s2).detach()
    return n, s1, s2


#: the three Cholesky factors and why each can fail, for the messages
_FACTORS = (("the covariance of u", "linearly dependent or constant columns of u"),
            ("the covariance of v", "linearly dependent or constant columns of v"),
            ("the Schur complement S_vv - S_vu S_uu^-1 S_uv",
             "a canonical correlation equals 1: v is an affine function of u"))


def _singular(k: int) -> ValueError:
    """The error for factor ``k`` of ``_FACTORS`` (0: S_uu, 1: S_vv, 2: the Schur complement)."""
    name, hint = _FACTORS[k]
    return ValueError(f"{name} is singular or not positive definite ({hint}); pass ridge > 0")


def _cholesky(k: int, cov: torch.Tensor) -> torch.Tensor:
    L, info = torch.linalg.cholesky_ex(cov)
    pivot = torch.diagonal(L).square()
    var = torch.diagonal(cov)
    if int(info) > 0 or bool((pivot <= SINGULAR_RTOL * cov.shape[0] * var).any()):
        raise _singular(k)
    return L


def lautum_from_covariance(cov: torch.Tensor, p: int, ridge: float = 0.0) -> torch.Tensor:
    """L(U; V) of the Gaussian with covariance ``cov`` ((p + q) x (p + q), u first); ``ridge``
    adds ridge * I to both diagonal blocks. Differentiable; no eigen/SVD."""
    d = cov.shape[0]
    eye = torch.eye(d, dtype=cov.dtype, device=cov.device)
    cov = (cov + cov.mT) / 2 + ridge * eye
    suu, suv, svv = cov[:p, :p], cov[:p, p:], cov[p:, p:]
    lu = _cholesky(0, suu)
    lv = _cholesky(1, svv)
    a = torch.linalg.solve_triangular(lu, suv, upper=False)  # L_u^-1 S_uv, (p, q)
    ls = _cholesky(2, svv - a.mT @ a)
    w = torch.linalg.solve_triangular(ls, a.mT, upper=False)  # L_S^-1 A^T, (q, p)
    odds = w.square().sum()  # sum_k rho^2 / (1 - rho^2)
    log_det = 2 * (torch.diagonal(ls).log().sum() - torch.diagonal(lv).log().sum())
    return odds + log_det / 2


def _lower_inverse(lower: torch.Tensor) -> torch.Tensor:
    """The inverse of a lower-triangular matrix, by a triangular solve."""
    eye = torch.eye(lower.shape[0], dtype=lower.dtype, device=lower.device)
    return torch.linalg.solve_triangular(lower, eye, upper=False)


def lautum_factored(cov: torch.Tensor, p: int) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """(L, factors) of a (regularised, symmetric) covariance S (u first) with
    ``lautum_from_covariance``'s value and checks, from two Cholesky factors: chol(S), whose
    diagonal blocks are chol(S_uu) and chol(S_vv - S_vu S_uu^-1 S_uv), and chol(S_vv).
    With J = S^-1: L = tr(J_uu S_uu) - p + (log det S - log det S_uu - log det S_vv) / 2.
    ``factors`` = (J, chol(S)^-1, chol(S_vv)) for :func:`lautum_factored_grad` (inverses by
    triangular solves: for matrices this small, LAPACK's cholesky_inverse costs 3-5x more)."""
    q = cov.shape[0] - p
    lc, info = torch.linalg.cholesky_ex(cov)
    lv, info_v = torch.linalg.cholesky_ex(cov[p:, p:])
    pivot, pivot_v = torch.diagonal(lc).square(), torch.diagonal(lv).square()
    var = torch.diagonal(cov)
    schur_var = var[p:] - lc[p:, :p].square().sum(1)
    bad = torch.cat([pivot[:p] <= SINGULAR_RTOL * p * var[:p],
                     pivot_v <= SINGULAR_RTOL * q * var[p:],
                     pivot[p:] <= SINGULAR_RTOL * q * schur_var]).tolist()
    info, info_v = int(info), int(info_v)
    if 0 < info <= p or any(bad[:p]):
        raise _singular(0)
    if info_v > 0 or any(bad[p:p + q]):
        raise _singular(1)
    if info > p or any(bad[p + q:]):
        raise _singular(2)
    lc_inv = _lower_inverse(lc)
    j = lc_inv.mT @ lc_inv
    value = ((j[:p, :p] * cov[:p, :p]).sum() - p
             + torch.diagonal(lc)[p:].log().sum() - torch.diagonal(lv).log().sum())
    return value, (j, lc_inv, lv)


def lautum_factored_grad(cov: torch.Tensor, p: int, factors: tuple[torch.Tensor, ...]
                         ) -> torch.Tensor:
    """dL/dS of :func:`lautum_factored` in closed form: with Q = [S_uu 0; 0 0],
    dL/dS = -J Q J + [J_uu 0; 0 0] + J / 2 - [S_uu^-1 0; 0 S_vv^-1] / 2 (symmetric)."""
    j, lc_inv, lv = factors
    lu_inv = lc_inv[:p, :p]  # chol(S_uu)^-1: chol(S_uu) is the leading block of chol(S)
    lv_inv = _lower_inverse(lv)
    g = j / 2 - j[:, :p] @ cov[:p, :p] @ j[:p, :]
    g[:p, :p] += j[:p, :p] - (lu_inv.mT @ lu_inv) / 2
    g[p:, p:] -= (lv_inv.mT @ lv_inv) / 2
    return g


def gaussian_lautum(u: torch.Tensor, v: torch.Tensor, *, ridge: float = 0.0,
                    distributed: bool = False, group=None, backend: str = "auto",
                    check_inputs: bool = True) -> torch.Tensor:
    """Gaussian Lautum information L(U; V) of views u (B, p), v (B, q) -> scalar (u's dtype).

    The statistics of [u | v] (sum z, sum z z^T about the batch mean, float64) come from one
    covariance kernel (``backend``: "auto", "reference", "cpu", "triton"); the value follows
    from Cholesky factors (module docstring). Differentiable in u and v; invariant to
    invertible affine maps of either view when ``ridge`` = 0.

    ``ridge`` = r >= 0 adds r * I to both view covariances S_uu and S_vv (not to S_uv), in the
    units of u and v: the result is the Lautum information of the regularised Gaussian, whose
    canonical correlations obey rho^2 <= lambda_u lambda_v / ((lambda_u + r)(lambda_v + r))
    with lambda the largest eigenvalue of each view's covariance; L stays finite even when v
    is a function of u. ``distributed=True`` all-reduces the statistics over ``group``
    (torch.distributed): value and gradients are those of the global batch, the
    concatenation of every rank's rows (each rank's gradient is w.r.t. its own rows).
    """
    check_views(u, v, check_inputs)
    ridge = _checks.nonneg_float("ridge", ridge)
    _dispatch.check_backend_name(backend)
    if u.dtype in (torch.float16, torch.bfloat16):
        u, v = u.float(), v.float()
    n, s1, s2 = _global_stats(u, v, backend, group if distributed else False)
    m = s1 / n
    cov = s2 / n - m[:, None] * m[None, :]
    return lautum_from_covariance(cov, u.shape[1], ridge).to(u.dtype)

"""The optimal H-score of a discrete joint pmf by ACE (Appendix B of the paper).

For discrete X, the best k-dimensional feature reaches H(f_opt) = sum_{i<=k} sigma_i^2, the
squared non-trivial singular values of the DTM B = sqrt(P_Y)^-1 P_YX sqrt(P_X)^-1 -
sqrt(P_Y) sqrt(P_X)^T (Definition 1, Corollary 1, section 4.2). Algorithm 1 (ACE) finds the
maximising f, g by alternating conditional expectations, i.e. subspace iteration on B.
"""

from __future__ import annotations

import torch

from pytransfer import _checks


def dtm(P_xy: torch.Tensor) -> torch.Tensor:
    """The DTM B~ (|Y|, |X|) of a joint pmf given as P_xy (|X|, |Y|) (Definition 1);
    impossible values of X or Y give zero columns or rows."""
    P = P_xy.double()
    px, py = P.sum(1), P.sum(0)
    ix, iy = (px > 0) / px.clamp(min=1e-300).sqrt(), (py > 0) / py.clamp(min=1e-300).sqrt()
    return P.T * iy[:, None] * ix[None, :] - torch.outer(py.sqrt(), px.sqrt())


def _normalise(f: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """f <- f E[f f^T]^{-1/2} under weights p, by Gram-Schmidt (QR of sqrt(p) f)."""
    f = f - (p[:, None] * f).sum(0)
    q, _ = torch.linalg.qr(p.sqrt()[:, None] * f)
    return q / p.sqrt()[:, None]


def optimal_h_score(P_xy: torch.Tensor, k: int | None = None, *, max_iter: int = 1000,
                    tol: float = 1e-12, seed: int = 0) -> torch.Tensor:
    """Maximal H-score of k-dimensional features for the joint pmf P_xy (|X|, |Y|), by ACE.

    ``k`` defaults to min(|X|, |Y|) - 1 (all non-trivial modes: H = ||B~||_F^2). Iterates
    Algorithm 1 until E[f(X)^T g(Y)] = H(f) gains less than ``tol`` (relative).
    """
    _checks.floating("P_xy", P_xy)
    _checks.ndim("P_xy", P_xy, (2,))
    _checks.positive_int("max_iter", max_iter)
    _checks.nonneg_float("tol", tol)
    _checks.finite("P_xy", P_xy)
    _checks.nonnegative("P_xy", P_xy)
    total = float(P_xy.sum())
    if abs(total - 1) > 1e-6:
        raise ValueError(f"P_xy must sum to 1 (a joint pmf), got {total}")
    P = P_xy.double()
    P = P[P.sum(1) > 0][:, P.sum(0) > 0]  # drop impossible values of X and Y
    px, py = P.sum(1), P.sum(0)
    K = min(P.shape) - 1
    k = K if k is None else _checks.positive_int("k", k)
    k = min(k, K)
    if k == 0:
        return P.new_zeros(())
    p_y_given_x, p_x_given_y = P / px[:, None], (P / py[None, :]).T
    gen = torch.Generator().manual_seed(seed)
    g = _normalise(torch.randn(P.shape[1], k, generator=gen, dtype=torch.float64), py)
    h_prev = -1.0
    for _ in range(max_iter):
        f = _normalise(p_y_given_x @ g, px)  # lines 4-5: f(x) = E[g(Y) | X = x], whitened
        g_raw = p_x_given_y @ f  # line 6: g(y) = E[f(X) | Y = y]
        h = (py[:, None] * g_raw.square()).sum()  # E[f^T g] = H(f) for whitened f
        g = _normalise(g_raw, py)  # line 7
        if h - h_prev <= tol * h:
            break
        h_prev = h
    return h

"""Gaussian Lautum information (the Lautum regularisation paper, eq. 2; closed form in the
canonical correlations): ``gaussian_lautum`` forward + backward, float32. (``LautumLoss`` at
training sizes is in the losses op, built from :func:`loss_fwd_bwd`.)

Anchor: a plain-torch CCA (centred covariances, ``eigh``-based whitening, ``svdvals``, then the
closed form), and for the loss the same loss written by hand on that anchor. Target: >= 2x the
anchor at B = 4096, p = q = 256. Full runs add the float64 agreement with the anchor (rel
1e-6) and finite gradients where the anchor's are not (repeated correlations; rho -> 1).
Compared outputs are the value followed by B times the gradients (so that value and gradient
errors weigh alike in the relative error).
"""

from __future__ import annotations

import torch

from pytransfer.bench.workload import Impl, Target, Work, Workload, fwd_bwd
from pytransfer.lautum import gaussian_lautum
from pytransfer.nn import LautumLoss

ANCHOR, HAND = "anchor CCA (eigh + svdvals)", "hand-written (anchor CCA)"
VIEWS = {"tiny": ((64, 8),), "quick": ((1024, 64), (4096, 256)),
         "full": ((1024, 64), (1024, 256), (4096, 256))}  # (B, p = q)


def anchor_cca_lautum(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Plain-torch CCA: centred covariances, S^-1/2 by eigh, canonical correlations as the
    singular values of the whitened cross-covariance, then the closed form."""
    uc, vc = u - u.mean(0), v - v.mean(0)
    n = u.shape[0]

    def inv_sqrt(c: torch.Tensor) -> torch.Tensor:
        w, e = torch.linalg.eigh(c)
        return (e * w.rsqrt()) @ e.mT

    k = inv_sqrt(uc.mT @ uc / n) @ (uc.mT @ vc / n) @ inv_sqrt(vc.mT @ vc / n)
    r2 = torch.linalg.svdvals(k).square()
    return (r2 / (1 - r2) + 0.5 * torch.log1p(-r2)).sum()


def handwritten_loss(x: torch.Tensor, features: torch.Tensor, proj_u: torch.Tensor,
                     proj_v: torch.Tensor) -> torch.Tensor:
    """The Lautum loss written by hand: -L of the projected views by the anchor CCA."""
    u = x.reshape(x.shape[0], -1) @ proj_u.to(x.dtype)
    return -anchor_cca_lautum(u, features @ proj_v.to(features.dtype))


def problem(B: int, p: int, q: int, dtype=torch.float32, seed: int = 0, device: str = "cpu"):
    """Views with a spread of canonical correlations and a common offset."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(B, p, generator=gen, dtype=torch.float64)
    mix = torch.randn(p, q, generator=gen, dtype=torch.float64) / p ** 0.5
    v = 0.8 * u @ mix + torch.randn(B, q, generator=gen, dtype=torch.float64)
    return (u + 2.0).to(dtype).to(device), (v - 1.0).to(dtype).to(device)


def _hadamard(n: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def repeated_problem(B: int = 64, k: int = 4, r: float = 0.6):
    """Exactly repeated correlations: Hadamard columns (+-1, orthogonal, centred), so both
    view covariances are multiples of I and every canonical correlation is r; eigh's backward
    divides by eigenvalue gaps of exactly zero."""
    h = _hadamard(B)
    u, w = h[:, 1:1 + k], h[:, 1 + k:1 + 2 * k]
    return u.clone(), r * u + (1 - r * r) ** 0.5 * w


def near_repeated_problem(B: int = 64, k: int = 4, r: float = 0.6):
    """As ``repeated_problem`` with QR-orthonormalised Gaussian columns: the eigenvalues tie
    only to rounding, and eigh's backward divides by gaps of about 1e-16."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(B, 2 * k, generator=gen, dtype=torch.float64)
    qm, _ = torch.linalg.qr(x - x.mean(0))
    u, w = qm[:, :k], qm[:, k:]
    return u, r * u + (1 - r * r) ** 0.5 * w


def near_one_problem():
    """rho -> 1: v = u plus a 1e-9 perturbation (rho^2 = 1 - O(1e-18) in float64)."""
    u, _ = problem(256, 4, 4, torch.float64, seed=3)
    return u, u + 1e-9 * torch.randn(u.shape, generator=torch.Generator().manual_seed(0),
                                     dtype=torch.float64)


def _compared(run, B: int):
    """``run``'s value followed by B times its gradients, one flat float tensor."""
    def call():
        value, *grads = run()
        return torch.cat([value.reshape(1), *(B * g.flatten() for g in grads)])
    return call


def anchor_gradient_error() -> float:
    """Max |anchor gradient - Cholesky gradient| / max |Cholesky gradient| at near-repeated
    correlations (the Cholesky gradient passes float64 gradcheck in the test suite)."""
    u, v = near_repeated_problem()
    _, gu, gv = fwd_bwd(gaussian_lautum, (u, v), grad=(0, 1))()
    _, au, av = fwd_bwd(anchor_cca_lautum, (u, v), grad=(0, 1))()
    ref = max(gu.abs().max(), gv.abs().max())
    return float(max((au - gu).abs().max(), (av - gv).abs().max()) / ref)


def gradient_finite(fn, u: torch.Tensor, v: torch.Tensor) -> float:
    """1.0 when the value and both gradients are finite, else 0.0."""
    try:
        value, gu, gv = fwd_bwd(fn, (u, v), grad=(0, 1))()
    except (RuntimeError, ValueError):
        return 0.0
    return float(all(bool(torch.isfinite(t).all()) for t in (value, gu, gv)))


def loss_problem(B: int, in_features: int = 784, feature_dim: int = 256):
    """Inputs, features and the loss (ridge 0: the hand-written loss's value)."""
    gen = torch.Generator().manual_seed(B)
    x = torch.rand(B, in_features, generator=gen)
    f = torch.relu(x @ torch.randn(in_features, feature_dim, generator=gen) / 28
                   + 0.5 * torch.randn(B, feature_dim, generator=gen))
    return x, f, LautumLoss(in_features, feature_dim, ridge=0.0, seed=0)


def loss_fwd_bwd(B: int, in_features: int = 784, feature_dim: int = 256):
    """(ours, hand-written) fwd+bwd callables of the loss at batch B; each returns (value,
    gradient of the features)."""
    x, f, loss = loss_problem(B, in_features, feature_dim)
    p, q = loss.dims(B)
    pu, pv = loss.proj_u[:, :p], loss.proj_v[:, :q]

    return (fwd_bwd(loss, (x, f), grad=(1,)),
            fwd_bwd(lambda a, b: handwritten_loss(a, b, pu, pv), (x, f), grad=(1,)))


def _metrics():
    u, v = problem(4096, 256, 256, torch.float64)
    ours, anchor = float(gaussian_lautum(u, v)), float(anchor_cca_lautum(u, v))
    ru, rv = repeated_problem()
    nu, nv = near_one_problem()

    def smooth(a, b):  # the loss's clamp
        return gaussian_lautum(a, b, ridge=1e-4)
    return {
        "relative difference vs anchor, float64": (abs(ours - anchor) / anchor, 1e-6, "<="),
        "finite gradient, repeated correlations: pytransfer": (
            gradient_finite(gaussian_lautum, ru, rv), 1.0, ">="),
        "finite gradient, repeated correlations: anchor": (
            gradient_finite(anchor_cca_lautum, ru, rv), None, ">="),
        "finite gradient, rho -> 1: pytransfer (ridge 1e-4)": (
            gradient_finite(smooth, nu, nv), 1.0, ">="),
        "finite gradient, rho -> 1: anchor": (gradient_finite(anchor_cca_lautum, nu, nv),
                                               None, ">="),
        "anchor gradient relative error, near-repeated correlations": (
            anchor_gradient_error(), None, "<="),
    }


def _views(B: int, p: int, size: str, device: str) -> Workload:
    u, v = problem(B, p, p, device=device)
    backend = "cpu" if device == "cpu" else "triton"
    ours = f"pytransfer {backend}"
    def both(fn):  # value and B times both views' gradients
        return _compared(fwd_bwd(fn, (u, v), grad=(0, 1)), B)

    impls: dict[str, Impl | str] = {
        ours: Impl(both(lambda a, b: gaussian_lautum(a, b, backend=backend)), tol=1e-3),
        "pytransfer reference": Impl(both(lambda a, b: gaussian_lautum(a, b, backend="reference")),
                                     anchor=True, tol=1e-3),
        ANCHOR: Impl(both(anchor_cca_lautum), anchor=True, tol=1e-3),
    }
    main = B == 4096 and p == 256
    return Workload(
        op="lautum", family=f"gaussian_lautum fwd+bwd, p=q={p}", size=B, size_name="B",
        detail="fp32", subject=ours, impls=impls,
        reference=_compared(fwd_bwd(lambda a, b: gaussian_lautum(a, b, backend="reference"),
                                    (u.double(), v.double()), grad=(0, 1)), B),
        targets=[Target(ANCHOR, 2.0)] if main else [],
        work=Work(flops=3 * 2.0 * B * (2 * p) ** 2, bytes=3 * 4.0 * B * 2 * p),
        metrics=_metrics if main and size == "full" else None,
        rounds={"tiny": 1, "quick": 3, "full": 3}[size])


def workloads(size: str, device: str = "cpu") -> list[Workload]:
    return [_views(B, p, size, device) for B, p in VIEWS[size]]

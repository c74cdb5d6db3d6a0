"""Lautum (issue 11): ``gaussian_lautum`` forward + backward at B=4096, p=q=256, float32, one
thread, and ``LautumLoss`` forward + backward at training sizes (B=128-512).

Anchor: a plain-torch CCA (centred covariances, ``eigh``-based whitening, ``svdvals``, then
the closed form), and for the loss the same loss written by hand on that anchor. Targets:
>= 2x the anchor; equal values (rel 1e-6 in float64); a finite gradient where the anchor's
is not (repeated correlations: a view with a repeated covariance eigenvalue; rho -> 1).

    python -m bench.report lautum [--quick]
    pytest bench/bench_lautum.py --benchmark-enable
"""

from __future__ import annotations

import pytest
import torch

from bench.common import Case, pin_one_thread
from pytransfer.lautum import gaussian_lautum
from pytransfer.nn import LautumLoss


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


def problem(B: int, p: int, q: int, dtype=torch.float32, seed: int = 0):
    """Views with a spread of canonical correlations and a common offset."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(B, p, generator=gen, dtype=torch.float64)
    mix = torch.randn(p, q, generator=gen, dtype=torch.float64) / p ** 0.5
    v = 0.8 * u @ mix + torch.randn(B, q, generator=gen, dtype=torch.float64)
    return (u + 2.0).to(dtype), (v - 1.0).to(dtype)


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


def anchor_gradient_error() -> float:
    """Max |anchor gradient - Cholesky gradient| / max |Cholesky gradient| at near-repeated
    correlations (the Cholesky gradient passes float64 gradcheck in the test suite)."""
    u, v = near_repeated_problem()
    _, gu, gv = fwd_bwd(gaussian_lautum, u, v)()
    _, au, av = fwd_bwd(anchor_cca_lautum, u, v)()
    ref = max(gu.abs().max(), gv.abs().max())
    return float(max((au - gu).abs().max(), (av - gv).abs().max()) / ref)


def fwd_bwd(fn, u: torch.Tensor, v: torch.Tensor):
    """A zero-argument callable: value and gradients w.r.t. both views."""
    def run():
        a, b = u.detach().requires_grad_(True), v.detach().requires_grad_(True)
        value = fn(a, b)
        value.backward()
        return value.detach(), a.grad, b.grad
    return run


def loss_fwd_bwd(B: int, in_features: int = 784, feature_dim: int = 256):
    """(ours, hand-written) fwd+bwd callables of the loss at batch B (ridge 0: same value)."""
    gen = torch.Generator().manual_seed(B)
    x = torch.rand(B, in_features, generator=gen)
    f = torch.relu(x @ torch.randn(in_features, feature_dim, generator=gen) / 28
                   + 0.5 * torch.randn(B, feature_dim, generator=gen))
    loss = LautumLoss(in_features, feature_dim, ridge=0.0, seed=0)
    p, q = loss.dims(B)
    pu, pv = loss.proj_u[:, :p], loss.proj_v[:, :q]

    def ours():
        ff = f.detach().requires_grad_(True)
        value = loss(x, ff)
        value.backward()
        return value.detach(), ff.grad

    def hand():
        ff = f.detach().requires_grad_(True)
        value = handwritten_loss(x, ff, pu, pv)
        value.backward()
        return value.detach(), ff.grad

    return ours, hand


def gradient_finite(fn, u: torch.Tensor, v: torch.Tensor) -> float:
    """1.0 when the value and both gradients are finite, else 0.0."""
    try:
        value, gu, gv = fwd_bwd(fn, u, v)()
    except (RuntimeError, ValueError):
        return 0.0
    return float(all(bool(torch.isfinite(t).all()) for t in (value, gu, gv)))


def _near_one():
    """rho -> 1: v = u plus a 1e-9 perturbation (rho^2 = 1 - O(1e-18) in float64)."""
    u, _ = problem(256, 4, 4, torch.float64, seed=3)
    return u, u + 1e-9 * torch.randn(u.shape, generator=torch.Generator().manual_seed(0),
                                     dtype=torch.float64)


def _metrics():
    u, v = problem(4096, 256, 256, torch.float64)
    ours, anchor = float(gaussian_lautum(u, v)), float(anchor_cca_lautum(u, v))
    ru, rv = repeated_problem()
    nu, nv = _near_one()
    smooth = lambda a, b: gaussian_lautum(a, b, ridge=1e-4)  # noqa: E731  the loss's clamp
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


def cases(quick: bool = False) -> list[Case]:
    pin_one_thread()
    B, p = (1024, 64) if quick else (4096, 256)
    u, v = problem(B, p, p)
    main = Case(op="lautum", name=f"gaussian_lautum fwd+bwd B={B} p=q={p} fp32",
                subject="pytransfer cpu",
                candidates={"pytransfer cpu": fwd_bwd(gaussian_lautum, u, v),
                            "pytransfer reference": fwd_bwd(
                                lambda a, b: gaussian_lautum(a, b, backend="reference"), u, v),
                            "anchor CCA (eigh + svdvals)": fwd_bwd(anchor_cca_lautum, u, v)},
                targets={"anchor CCA (eigh + svdvals)": 2.0},
                metrics=None if quick else _metrics, rounds=3)
    b2 = 512 if quick else 1024
    u2, v2 = problem(b2, p, p)
    small_b = Case(op="lautum", name=f"gaussian_lautum fwd+bwd B={b2} p=q={p} fp32",
                   subject="pytransfer cpu",
                   candidates={"pytransfer cpu": fwd_bwd(gaussian_lautum, u2, v2),
                               "anchor CCA (eigh + svdvals)": fwd_bwd(anchor_cca_lautum, u2,
                                                                      v2)},
                   rounds=5)
    out = [main, small_b]
    for b in (128, 512) if quick else (128, 256, 512):
        ours, hand = loss_fwd_bwd(b)
        out.append(Case(op="lautum", name=f"LautumLoss fwd+bwd B={b} (784 -> p, 256 -> q) fp32",
                        subject="LautumLoss", candidates={"LautumLoss": ours,
                                                          "hand-written (anchor CCA)": hand},
                        rounds=20))
    return out


# ------------------------------------------------------------- pytest-benchmark suite
@pytest.mark.parametrize("label", ["pytransfer", "anchor"])
def test_gaussian_lautum_b4096_p256(benchmark, label):
    u, v = problem(4096, 256, 256)
    fn = fwd_bwd(gaussian_lautum if label == "pytransfer" else anchor_cca_lautum, u, v)
    value, gu, gv = benchmark.pedantic(fn, rounds=3, warmup_rounds=1)
    want = anchor_cca_lautum(u.double(), v.double())
    assert float(value) == pytest.approx(float(want), rel=1e-4)  # float32 inputs
    assert torch.isfinite(gu).all() and torch.isfinite(gv).all()


@pytest.mark.parametrize("B", [128, 256, 512])
@pytest.mark.parametrize("label", ["LautumLoss", "hand-written"])
def test_lautum_loss_training_sizes(benchmark, B, label):
    ours, hand = loss_fwd_bwd(B)
    value, grad = benchmark.pedantic(ours if label == "LautumLoss" else hand, rounds=10,
                                     warmup_rounds=2)
    other, other_grad = (hand if label == "LautumLoss" else ours)()
    assert float(value) == pytest.approx(float(other), rel=1e-3)
    torch.testing.assert_close(grad, other_grad, rtol=1e-2, atol=1e-4)


def test_values_equal_in_float64():
    u, v = problem(4096, 256, 256, torch.float64)
    assert float(gaussian_lautum(u, v)) == pytest.approx(float(anchor_cca_lautum(u, v)),
                                                         rel=1e-6)


def test_finite_gradient_where_the_anchor_is_not():
    ru, rv = repeated_problem()
    assert gradient_finite(gaussian_lautum, ru, rv) == 1.0
    assert gradient_finite(anchor_cca_lautum, ru, rv) == 0.0
    nu, nv = _near_one()
    assert gradient_finite(lambda a, b: gaussian_lautum(a, b, ridge=1e-4), nu, nv) == 1.0
    assert gradient_finite(anchor_cca_lautum, nu, nv) == 0.0
    assert anchor_gradient_error() > 1e-3  # finite but wrong where eigenvalues nearly tie

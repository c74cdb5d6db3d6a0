"""Gaussian Lautum information (issue 11): the closed form against known canonical
correlations, a Monte-Carlo KL, an eigen/SVD CCA; invariances, gradients, the op, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from pytransfer.lautum import _ops, gaussian_lautum, lautum_from_correlations
from pytransfer.lautum.gaussian import lautum_from_covariance


def canonical_views(B, rho, p, q, *, seed=0, dtype=torch.float64, affine=True):
    """Gaussian views with population canonical correlations ``rho`` (len <= min(p, q)),
    mixed by random invertible affine maps."""
    gen = torch.Generator().manual_seed(seed)
    k = len(rho)
    r = torch.tensor(rho, dtype=torch.float64)
    u = torch.randn(B, p, generator=gen, dtype=torch.float64)
    noise = torch.randn(B, q, generator=gen, dtype=torch.float64)
    v = noise.clone()
    v[:, :k] = r * u[:, :k] + (1 - r.square()).sqrt() * noise[:, :k]
    if affine:
        u = u @ (torch.eye(p, dtype=torch.float64)
                 + 0.5 * torch.randn(p, p, generator=gen, dtype=torch.float64)) + 3.0
        v = v @ (torch.eye(q, dtype=torch.float64)
                 + 0.5 * torch.randn(q, q, generator=gen, dtype=torch.float64)) - 2.0
    return u.to(dtype), v.to(dtype)


def np_cca_lautum(u: np.ndarray, v: np.ndarray) -> float:
    """Independent formula: whiten each view with eigh, canonical correlations = singular
    values of the whitened cross-covariance, then the closed form."""
    u = u - u.mean(0)
    v = v - v.mean(0)
    n = len(u)

    def inv_sqrt(c):
        w, e = np.linalg.eigh(c)
        return e @ np.diag(w ** -0.5) @ e.T

    k = inv_sqrt(u.T @ u / n) @ (u.T @ v / n) @ inv_sqrt(v.T @ v / n)
    r2 = np.linalg.svd(k, compute_uv=False) ** 2
    return float(np.sum(r2 / (1 - r2) + 0.5 * np.log1p(-r2)))


def test_known_correlations_within_5_percent():
    rho = [0.8, 0.5, 0.3]
    want = float(lautum_from_correlations(torch.tensor(rho, dtype=torch.float64)))
    for seed in range(3):
        u, v = canonical_views(2500, rho, 3, 4, seed=seed)
        got = float(gaussian_lautum(u, v))
        assert abs(got - want) < 0.05 * want, (seed, got, want)


def test_closed_form_is_the_monte_carlo_kl():
    """KL(P_U x P_V || P_UV) by Monte Carlo with scipy densities, against the closed form."""
    rho = np.array([0.7, 0.4])
    p, q = 2, 3
    rng = np.random.default_rng(1)
    a = rng.normal(size=(p, p)) + 2 * np.eye(p)
    b = rng.normal(size=(q, q)) + 2 * np.eye(q)
    cross = np.zeros((p, q))
    cross[:2, :2] = np.diag(rho)
    joint = np.block([[a @ a.T, a @ cross @ b.T], [b @ cross.T @ a.T, b @ b.T]])
    prod = joint.copy()
    prod[:p, p:] = 0
    prod[p:, :p] = 0
    x = rng.multivariate_normal(np.zeros(p + q), prod, size=200_000)
    log_ratio = (multivariate_normal(cov=prod).logpdf(x) - multivariate_normal(cov=joint)
                 .logpdf(x))
    mc, se = log_ratio.mean(), log_ratio.std() / np.sqrt(len(x))
    closed = float(lautum_from_correlations(torch.tensor(rho)))
    assert abs(mc - closed) < 4 * se, (mc, closed, se)
    # the Cholesky route on the population covariance is the closed form to rounding
    pop = float(lautum_from_covariance(torch.tensor(joint), p))
    assert abs(pop - closed) < 1e-10 * closed


@pytest.mark.parametrize("B,p,q", [(40, 3, 5), (97, 7, 2), (61, 1, 1), (200, 13, 11)])
def test_matches_eigen_svd_cca(backend, B, p, q):
    u, v = canonical_views(B, [0.9, 0.3][:min(p, q, 2)], p, q, seed=B)
    got = gaussian_lautum(u, v, backend=backend)
    want = np_cca_lautum(u.numpy(), v.numpy())
    assert abs(float(got) - want) <= 1e-9 * abs(want)


def test_non_contiguous_views(backend):
    u, v = canonical_views(80, [0.6], 4, 6, seed=3)
    wide = torch.cat([u, v], 1)
    got = gaussian_lautum(wide[:, :4], wide[:, 4:].t().contiguous().t(), backend=backend)
    assert abs(float(got) - np_cca_lautum(u.numpy(), v.numpy())) < 1e-9 * float(got)


def test_affine_invariance():
    u, v = canonical_views(300, [0.7, 0.2], 3, 4, seed=4, affine=False)
    gen = torch.Generator().manual_seed(9)
    a = torch.randn(3, 3, generator=gen, dtype=torch.float64) + 3 * torch.eye(3,
                                                                            dtype=torch.float64)
    b = torch.randn(4, 4, generator=gen, dtype=torch.float64) * 5
    base = gaussian_lautum(u, v)
    moved = gaussian_lautum(u @ a - 7.0, 1e3 * (v @ b) + 1e4)
    torch.testing.assert_close(moved, base, rtol=1e-9, atol=0)


def test_independent_views_are_near_zero():
    u, v = canonical_views(4000, [], 2, 2, seed=5)
    value = float(gaussian_lautum(u, v))
    # E[sum rho^2] ~ pq/B for independent data and L ~ sum rho^2 / 2 for small rho
    assert 0 <= value < 5 * 2 * 2 / (2 * 4000)


def test_float32_large_offset_keeps_precision(backend):
    u, v = canonical_views(500, [0.8, 0.4], 3, 3, seed=6)
    u32, v32 = (u + 1e4).float(), (v - 3e3).float()
    want = float(gaussian_lautum(u32.double(), v32.double()))  # the same rounded inputs
    got = gaussian_lautum(u32, v32, backend=backend)
    assert got.dtype == torch.float32
    assert abs(float(got) - want) < 1e-4 * want


def test_ridge_adds_to_view_covariances_and_bounds_rho():
    u, v = canonical_views(200, [0.5], 2, 3, seed=7, affine=False)
    cov = torch.cov(torch.cat([u, v], 1).T, correction=0)
    r = 0.3
    reg = cov.clone()
    reg[:2, :2] += r * torch.eye(2, dtype=torch.float64)
    reg[2:, 2:] += r * torch.eye(3, dtype=torch.float64)
    want = lautum_from_covariance(reg, 2)
    torch.testing.assert_close(gaussian_lautum(u, v, ridge=r), want, rtol=1e-10, atol=0)
    # v an exact linear function of u: infinite L without ridge, finite with it
    with pytest.raises(ValueError, match="canonical correlation equals 1"):
        gaussian_lautum(u, u @ torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=torch.float64) + 1)
    assert torch.isfinite(gaussian_lautum(u, u.clone(), ridge=1e-3))


def repeated_views(B=30, k=2, r=0.6, seed=0):
    """Views whose SAMPLE canonical correlations are exactly (r,) * k: orthonormal centred
    columns, v = r u + sqrt(1 - r^2) w with w orthonormal and orthogonal to u."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 2 * k, generator=gen, dtype=torch.float64)
    x = x - x.mean(0)
    qm, _ = torch.linalg.qr(x)
    u, w = qm[:, :k], qm[:, k:]
    return u * 3.0, r * u + (1 - r * r) ** 0.5 * w


def hadamard_views(B=16, k=2, r=0.6):
    """Exactly repeated correlations: +-1 Hadamard columns (orthogonal, centred), so both view
    covariances are multiples of I and every canonical correlation is r."""
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < B:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    u, w = h[:, 1:1 + k], h[:, 1 + k:1 + 2 * k]
    return u.clone(), r * u + (1 - r * r) ** 0.5 * w


def test_repeated_correlations_value():
    want = float(lautum_from_correlations(torch.tensor([0.6, 0.6], dtype=torch.float64)))
    for u, v in (repeated_views(), hadamard_views()):
        assert abs(float(gaussian_lautum(u, v)) - want) < 1e-10


@pytest.mark.parametrize("case", ["generic", "repeated", "hadamard", "ridge"])
def test_gradcheck(backend, case):
    if case == "repeated":
        u, v = repeated_views(B=12)
    elif case == "hadamard":
        u, v = hadamard_views()
    else:
        u, v = canonical_views(13, [0.7, 0.3], 3, 4, seed=8)
    ridge = 0.1 if case == "ridge" else 0.0
    u.requires_grad_(True)
    v.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b: gaussian_lautum(a, b, ridge=ridge, backend=backend), (u, v))


@pytest.mark.parametrize("op", [_ops.lautum_stats_cpu, _ops.lautum_stats_triton])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_opcheck(op, dtype):
    u = torch.randn(9, 3, dtype=dtype, requires_grad=True)
    v = torch.randn(9, 2, dtype=dtype, requires_grad=True)
    shift = torch.cat([u, v], 1).detach().double().mean(0)
    torch.library.opcheck(op, (u, v, shift))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_backends_agree(dtype):
    u, v = canonical_views(70, [0.8, 0.5], 4, 5, seed=10, dtype=dtype)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    results = {}
    for name in ("reference", "cpu", "triton"):
        a, b = u.clone().requires_grad_(True), v.clone().requires_grad_(True)
        value = gaussian_lautum(a, b, backend=name)
        value.backward()
        results[name] = (value.detach(), a.grad, b.grad)
    for name in ("cpu", "triton"):
        for got, want in zip(results[name], results["reference"]):
            torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("op", [_ops.lautum_stats_cpu, _ops.lautum_stats_triton])
def test_stats_op_against_autograd(op, monkeypatch):
    monkeypatch.setattr(_ops, "BLOCK", 2)  # several column blocks per view, one straddling
    u = torch.randn(11, 5, dtype=torch.float64, requires_grad=True)
    v = torch.randn(11, 3, dtype=torch.float64, requires_grad=True)
    shift = torch.cat([u, v], 1).detach().mean(0) + 0.3
    g1, g2 = torch.randn(8, dtype=torch.float64), torch.randn(8, 8, dtype=torch.float64)
    s1, s2 = op(u, v, shift)
    gu, gv = torch.autograd.grad((s1 * g1).sum() + (s2 * g2).sum(), (u, v))
    z = torch.cat([u, v], 1) - shift
    torch.testing.assert_close(s1, z.sum(0).detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s2, (z.T @ z).detach(), rtol=1e-12, atol=1e-12)
    wu, wv = torch.autograd.grad((z.sum(0) * g1).sum() + ((z.T @ z) * g2).sum(), (u, v))
    torch.testing.assert_close(gu, wu, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gv, wv, rtol=1e-12, atol=1e-12)


def _ok():
    return canonical_views(20, [0.5], 2, 3, seed=11)


BAD = [
    ("u not a tensor", lambda u, v: ([[1.0]], v), TypeError, "u must be a torch.Tensor"),
    ("integer v", lambda u, v: (u, v.long()), TypeError, "v must have a floating dtype"),
    ("dtypes differ", lambda u, v: (u, v.float()), TypeError, "share one float dtype"),
    ("u 1-D", lambda u, v: (u[:, 0], v), ValueError, "u must be 2-D"),
    ("v 3-D", lambda u, v: (u, v[None]), ValueError, "v must be 2-D"),
    ("batch sizes", lambda u, v: (u, v[:-1]), ValueError, "same batch size"),
    ("B <= p + q", lambda u, v: (u[:5], v[:5]), ValueError, "must exceed p \\+ q"),
    ("empty view", lambda u, v: (u, v[:, :0]), ValueError, "at least one column"),
    ("NaN in u", lambda u, v: (u.index_put((torch.tensor([3]),), torch.tensor(float("nan"),
                               dtype=u.dtype)), v), ValueError, "u contains NaN or Inf"),
    ("inf in v", lambda u, v: (u, v * torch.tensor(float("inf"), dtype=v.dtype)), ValueError,
     "v contains NaN or Inf"),
    ("constant column", lambda u, v: (u.index_fill(1, torch.tensor([0]), 2.0), v),
     ValueError, "covariance of u is singular"),
    ("duplicated column of v", lambda u, v: (u, torch.cat([v, v[:, :1]], 1)), ValueError,
     "covariance of v is singular"),
]


@pytest.mark.parametrize("case,make,exc,match", BAD, ids=[b[0] for b in BAD])
def test_bad_input(case, make, exc, match):
    u, v = make(*_ok())
    with pytest.raises(exc, match=match):
        gaussian_lautum(u, v)


@pytest.mark.parametrize("kw,exc,match", [
    ({"ridge": -1.0}, ValueError, "ridge"), ({"ridge": "big"}, TypeError, "ridge"),
    ({"ridge": float("nan")}, ValueError, "ridge"), ({"backend": "gpu"}, ValueError, "backend"),
])
def test_bad_options(kw, exc, match):
    with pytest.raises(exc, match=match):
        gaussian_lautum(*_ok(), **kw)

"""LautumLoss (issue 11): -L of fixed seeded projections, against a hand-written numpy CCA;
the ridge bound on rho^2; defaults, pluggable estimators, gradients, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_lautum import np_cca_lautum

from pytransfer.lautum import gaussian_lautum, lautum_from_covariance
from pytransfer.lautum.gaussian import lautum_factored, lautum_factored_grad
from pytransfer.nn import LautumLoss


def batch(B=64, shape=(3, 4), k=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(B, *shape, generator=gen, dtype=torch.float64)
    w = torch.randn(int(np.prod(shape)), k, generator=gen, dtype=torch.float64)
    feats = torch.tanh(x.reshape(B, -1) @ w) + 0.3 * torch.randn(B, k, generator=gen,
                                                                 dtype=torch.float64)
    return x, feats


def test_value_is_minus_numpy_cca_of_the_projections():
    x, f = batch()
    loss = LautumLoss(12, 6, p=4, q=3, ridge=0.0, seed=3)
    u = x.reshape(64, -1).numpy() @ loss.proj_u.numpy()
    v = f.numpy() @ loss.proj_v.numpy()
    assert loss.proj_u.shape == (12, 4) and loss.proj_v.shape == (6, 3)
    want = -np_cca_lautum(u, v)
    assert abs(float(loss(x, f)) - want) < 1e-9 * abs(want)
    assert float(loss(x, f)) < 0  # the loss is minus a non-negative information


def test_projections_are_seeded_buffers():
    a, b, c = LautumLoss(12, 6, seed=1), LautumLoss(12, 6, seed=1), LautumLoss(12, 6, seed=2)
    assert torch.equal(a.proj_u, b.proj_u) and torch.equal(a.proj_v, b.proj_v)
    assert not torch.equal(a.proj_u, c.proj_u)
    assert set(dict(a.named_buffers())) == {"proj_u", "proj_v"}
    assert not list(a.parameters())


def test_default_dims_keep_p_plus_q_within_a_quarter_of_the_batch():
    loss = LautumLoss(64, 32)
    assert loss.dims(512) == (8, 8)
    assert loss.dims(40) == (5, 5)
    x, f = batch(B=40, shape=(8, 8), k=32)
    assert torch.isfinite(loss(x, f))


def _regularised_rho2(u, v, r):
    """Largest squared canonical correlation of the ridge-regularised covariances (numpy)."""
    u, v = u - u.mean(0), v - v.mean(0)
    n = len(u)
    cuu = u.T @ u / n + r * np.eye(u.shape[1])
    cvv = v.T @ v / n + r * np.eye(v.shape[1])
    k = np.linalg.solve(cuu, u.T @ v / n) @ np.linalg.solve(cvv, v.T @ u / n)
    return float(np.max(np.linalg.eigvals(k).real))


def test_ridge_bounds_rho_squared_when_features_are_a_function_of_inputs():
    x, _ = batch(B=80, shape=(6,))
    feats = x @ torch.randn(6, 6, generator=torch.Generator().manual_seed(4),
                            dtype=torch.float64)  # v is an exact linear function of u
    strict = LautumLoss(6, 6, p=6, q=3, ridge=0.0)  # U spans x, so V is a function of U
    with pytest.raises(ValueError, match="canonical correlation equals 1"):
        strict(x, feats)
    loss = LautumLoss(6, 6, p=6, q=3, ridge=1e-4)
    value = loss(x, feats)
    assert torch.isfinite(value) and float(-value) <= 3 / 1e-4
    u, v = loss.views(x, feats)
    us = (u / loss._scale(u)).numpy()
    vs = (v / loss._scale(v)).numpy()
    assert 0.99 < _regularised_rho2(us, vs, 1e-4 * 6) <= 1 - 1e-4


def test_custom_estimator_is_called_on_the_views():
    calls = []

    def estimator(u, v):
        calls.append((u.shape, v.shape))
        return (u.sum() - v.sum()) * 0 + 2.5

    x, f = batch()
    assert float(LautumLoss(12, 6, p=2, q=3, estimator=estimator)(x, f)) == -2.5
    assert calls == [((64, 2), (64, 3))]


def test_gradients_reach_features_and_match_the_estimator():
    x, f = batch(B=30, k=4)
    loss = LautumLoss(12, 4, p=2, q=2, ridge=0.0)
    f.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda feats: loss(x, feats), (f,))
    (g,) = torch.autograd.grad(loss(x, f), f)
    ff = f.detach().clone().requires_grad_(True)
    u = x.reshape(30, -1) @ loss.proj_u
    (want,) = torch.autograd.grad(-gaussian_lautum(u, ff @ loss.proj_v), ff)
    torch.testing.assert_close(g, want, rtol=1e-10, atol=1e-12)


def test_float32_features():
    x, f = batch()
    loss = LautumLoss(12, 6, p=3, q=3)
    got = loss(x.float(), f.float())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), loss(x, f), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kw,exc,match", [
    ({"p": 13}, ValueError, "p=13 exceeds"), ({"q": 0}, ValueError, "q must be >= 1"),
    ({"ridge": 0.7}, ValueError, "ridge must be in"), ({"ridge": -1.0}, ValueError, "ridge"),
    ({"estimator": 3}, TypeError, "estimator must be callable"),
    ({"in_features": 0}, ValueError, "in_features"),
])
def test_bad_construction(kw, exc, match):
    args = {"in_features": 12, "feature_dim": 6, **kw}
    with pytest.raises(exc, match=match):
        LautumLoss(**args)


@pytest.mark.parametrize("make,exc,match", [
    (lambda x, f: (x[:, :2], f), ValueError, "in_features=12"),
    (lambda x, f: (x, f[:, :5]), ValueError, "feature_dim=6"),
    (lambda x, f: (x[:-1], f), ValueError, "rows"),
    (lambda x, f: (x, f[None]), ValueError, "features must be 2-D"),
    (lambda x, f: (x.long(), f), TypeError, "x_target must have a floating dtype"),
    (lambda x, f: (x, f * float("nan")), ValueError, "NaN"),
])
def test_bad_forward(make, exc, match):
    x, f = batch()
    with pytest.raises(exc, match=match):
        LautumLoss(12, 6, p=3, q=3)(*make(x, f))


def _covariance(p, q, seed, dependent=0.7):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(60, p + q, generator=gen, dtype=torch.float64)
    z[:, p:] += dependent * z[:, :1]
    zc = z - z.mean(0)
    return zc.T @ zc / 60


@pytest.mark.parametrize(("p", "q", "ridge"), [(1, 1, 0.0), (3, 2, 0.0), (5, 7, 1e-3),
                                               (8, 8, 0.0)])
def test_factored_value_and_closed_form_gradient(p, q, ridge):
    """lautum_factored's value is lautum_from_covariance's (three Cholesky factors, two
    solves) and lautum_factored_grad is autograd's gradient of it (symmetrised)."""
    cov = _covariance(p, q, seed=p + q)
    reg = cov + ridge * torch.eye(p + q, dtype=torch.float64)
    value, factors = lautum_factored(reg, p)
    leaf = cov.clone().requires_grad_(True)
    want = lautum_from_covariance(leaf, p, ridge)
    (grad,) = torch.autograd.grad(want, leaf)
    torch.testing.assert_close(value, want.detach(), rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(lautum_factored_grad(reg, p, factors), (grad + grad.T) / 2,
                               rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("ridge", [0.0, 1e-3])
def test_few_op_path_equals_the_general_path(dtype, ridge):
    """The default call (CPU, backend "auto", p + q <= 64) takes the few-op path; its value and
    gradients equal those of the general path (backend "cpu": scaled views, the statistics
    op and autograd through the Cholesky factors)."""
    x, f = batch(B=96, k=6)
    x, f = x.to(dtype), f.to(dtype)
    out = []
    for backend in ("auto", "cpu"):
        loss = LautumLoss(12, 6, p=4, q=3, ridge=ridge, backend=backend)
        feats = f.clone().requires_grad_(True)
        value = loss(x, feats)
        value.backward()
        out.append((value.detach(), feats.grad))
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-4,
                                                                           "atol": 1e-5}
    for got, want in zip(*out, strict=True):
        assert got.dtype == dtype
        torch.testing.assert_close(got, want, **tol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_few_op_path_half_inputs_as_the_general_path(dtype):
    """Half-precision features: a float32 value (as ``gaussian_lautum`` returns) and
    gradients in the features' dtype, both paths alike."""
    x, f = batch(B=64, k=6)
    out = []
    for backend in ("auto", "cpu"):
        feats = f.to(dtype).requires_grad_(True)
        value = LautumLoss(12, 6, p=3, q=3, backend=backend)(x.to(dtype), feats)
        value.backward()
        out.append((value.detach(), feats.grad))
    (v1, g1), (v2, g2) = out
    assert v1.dtype == v2.dtype == torch.float32 and g1.dtype == g2.dtype == dtype
    torch.testing.assert_close(v1, v2, rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(g1.float(), g2.float(), rtol=5e-2, atol=1e-3)


@pytest.mark.parametrize(("column", "match"), [(0, "covariance of u is singular"),
                                               (1, "covariance of v is singular")])
def test_few_op_path_names_a_singular_view(column, match):
    """A constant view column: the few-op path raises the general path's message."""
    x, f = batch(B=64, k=6)
    loss = LautumLoss(12, 6, p=3, q=3, ridge=0.0)
    if column == 0:
        loss.proj_u[:, 1] = 0.0
    else:
        loss.proj_v[:, 2] = 0.0
    for backend in ("auto", "cpu"):
        loss.backend = backend
        with pytest.raises(ValueError, match=match):
            loss(x, f)

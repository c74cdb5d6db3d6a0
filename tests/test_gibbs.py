"""pytransfer.free_energy.gibbs_weights / gibbs_moments: every backend against the reference
and numpy formulas, gradients (gradcheck), opcheck of every custom op, bad input."""

import numpy as np
import pytest
import torch

from pytransfer.free_energy import _ops, gibbs_moments, gibbs_weights
from pytransfer.free_energy.reference import (
    gibbs_moments_backward_reference,
    gibbs_moments_reference,
    gibbs_weights_backward_reference,
)

SHAPES = [(1, 1, 1), (3, 2, 1), (5, 7, 3), (2, 33, 4), (4, 5, 6)]


def _inputs(X, S, K, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    H = torch.randn(X, S, generator=gen, dtype=dtype) * 3
    q = torch.randn(X, S, generator=gen, dtype=dtype)
    w = torch.rand(X, S, generator=gen, dtype=dtype) + 0.1
    f = torch.randn(X, S, K, generator=gen, dtype=dtype)
    return H, q, w / w.sum(1, keepdim=True), f


@pytest.mark.parametrize("X,S,K", SHAPES)
def test_weights_match_numpy(backend, X, S, K):
    H, q, _, _ = _inputs(X, S, K, seed=S)
    out = gibbs_weights(H, q, backend=backend)
    logits = -H.numpy() - q.numpy()
    expect = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1,
                             keepdims=True)) - logits.max(1, keepdims=True)
    np.testing.assert_allclose(out.numpy(), expect, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(X, dtype=H.dtype))


@pytest.mark.parametrize("X,S,K", SHAPES)
def test_moments_match_numpy(backend, X, S, K):
    _, _, w, f = _inputs(X, S, K, seed=K)
    means, cov = gibbs_moments(w, f, backend=backend)
    for x in range(X):
        wn, fn = w[x].numpy(), f[x].numpy()
        m = wn @ fn
        np.testing.assert_allclose(means[x].numpy(), m, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(cov[x].numpy(), (fn - m).T @ np.diag(wn) @ (fn - m),
                                   rtol=1e-10, atol=1e-12)
        if S > 1:  # normalised weights: the numpy weighted covariance (aweights, ddof=0)
            np.testing.assert_allclose(cov[x].numpy(),
                                       np.atleast_2d(np.cov(fn.T, aweights=wn, bias=True)),
                                       rtol=1e-10, atol=1e-12)


def test_float32_and_non_contiguous(backend):
    H, q, w, f = _inputs(6, 9, 3, seed=2)
    ref_w = gibbs_weights(H, q, backend="reference")
    out = gibbs_weights(H.float().t().contiguous().t(), q.float(), backend=backend)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref_w, rtol=1e-5, atol=1e-5)
    f_nc = f.transpose(0, 1).contiguous().transpose(0, 1)
    assert not f_nc.is_contiguous()
    m, c = gibbs_moments(w, f_nc, backend=backend)
    m0, c0 = gibbs_moments_reference(w, f)
    torch.testing.assert_close(m, m0)
    torch.testing.assert_close(c, c0)


@pytest.mark.parametrize("X,S,K", [(2, 3, 2), (3, 5, 1)])
def test_gradcheck(backend, X, S, K):
    H, q, w, f = _inputs(X, S, K, seed=1)
    H, q, w, f = (t.clone().requires_grad_() for t in (H, q, w, f))
    assert torch.autograd.gradcheck(lambda a, b: gibbs_weights(a, b, backend=backend), (H, q))
    assert torch.autograd.gradcheck(lambda a, b: gibbs_moments(a, b, backend=backend,
                                                               check_inputs=False), (w, f))


@pytest.mark.parametrize("X,S,K", [(2, 3, 2), (4, 33, 3)])
def test_backward_matches_closed_form(backend, X, S, K):
    """Each backend's vector-Jacobian product equals the reference's closed-form backward."""
    H, q, w, f = _inputs(X, S, K, seed=5)
    H, q, w, f = (t.clone().requires_grad_() for t in (H, q, w, f))
    gen = torch.Generator().manual_seed(6)
    g_lw = torch.randn(X, S, generator=gen, dtype=H.dtype)
    lw = gibbs_weights(H, q, backend=backend)
    gH, gq = torch.autograd.grad(lw, (H, q), g_lw)
    want = gibbs_weights_backward_reference(g_lw, lw.detach())
    torch.testing.assert_close(gH, want)
    torch.testing.assert_close(gq, want)
    g_m = torch.randn(X, K, generator=gen, dtype=H.dtype)
    g_c = torch.randn(X, K, K, generator=gen, dtype=H.dtype)
    means, cov = gibbs_moments(w, f, backend=backend, check_inputs=False)
    gw, gf = torch.autograd.grad((means, cov), (w, f), (g_m, g_c))
    ww, wf = gibbs_moments_backward_reference(w.detach(), f.detach(), means.detach(), g_m, g_c)
    torch.testing.assert_close(gw, ww)
    torch.testing.assert_close(gf, wf)


def test_reference_second_order():
    H, q, w, f = _inputs(2, 4, 2, seed=3)
    H, w, f = (t.clone().requires_grad_() for t in (H, w, f))
    assert torch.autograd.gradgradcheck(lambda a: gibbs_weights(a, q, backend="reference"), (H,))
    assert torch.autograd.gradgradcheck(
        lambda a, b: gibbs_moments(a, b, backend="reference", check_inputs=False), (w, f))


@pytest.mark.parametrize("name", sorted(_ops.KERNELS))
def test_opcheck(name):
    H, q, w, f = _inputs(3, 5, 2, seed=4)
    ops = _ops.OPS[name]
    lw = gibbs_weights(H, q, backend="reference")
    m, _ = gibbs_moments_reference(w, f)
    gm, gc = torch.randn(3, 2, dtype=H.dtype), torch.randn(3, 2, 2, dtype=H.dtype)
    torch.library.opcheck(ops["weights"], (H.requires_grad_(), q))
    torch.library.opcheck(ops["weights_backward"], (torch.randn_like(lw), lw))
    torch.library.opcheck(ops["moments"], (w.requires_grad_(), f.requires_grad_()))
    torch.library.opcheck(ops["moments_backward"], (w.detach(), f.detach(), m.detach(), gm, gc))


def test_extreme_logits_stay_finite(backend):
    H = torch.tensor([[1e4, -1e4, 0.0], [500.0, 500.0, 500.0]], dtype=torch.float64)
    out = gibbs_weights(H, torch.zeros_like(H), backend=backend)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.exp().sum(1), torch.ones(2, dtype=H.dtype))
    torch.testing.assert_close(out[1], torch.full((3,), -np.log(3.0), dtype=H.dtype))


BAD = [
    (lambda H, q, w, f: gibbs_weights(H.numpy(), q), TypeError, "neg_log_joint must be a torch"),
    (lambda H, q, w, f: gibbs_weights(H.long(), q), TypeError, "neg_log_joint must have a float"),
    (lambda H, q, w, f: gibbs_weights(H[0], q), ValueError, "neg_log_joint must be 2-D"),
    (lambda H, q, w, f: gibbs_weights(H, q[:, :2]), ValueError, "log_q must have the shape"),
    (lambda H, q, w, f: gibbs_weights(H, q.float()), TypeError, "share one float dtype"),
    (lambda H, q, w, f: gibbs_weights(H.index_fill(1, torch.tensor([1]), float("nan")), q),
     ValueError, "neg_log_joint contains NaN"),
    (lambda H, q, w, f: gibbs_weights(H, q.index_fill(0, torch.tensor([2]), float("inf"))),
     ValueError, "datum x index 2"),
    (lambda H, q, w, f: gibbs_weights(H, q, backend="gpu"), ValueError, "backend must be"),
    (lambda H, q, w, f: gibbs_moments(w, f[:, :, 0]), ValueError, "fields must be 3-D"),
    (lambda H, q, w, f: gibbs_moments(w[:, :2], f), ValueError, "fields must have shape"),
    (lambda H, q, w, f: gibbs_moments(-w, f), ValueError, "weights has negative"),
    (lambda H, q, w, f: gibbs_moments(w, f * float("inf")), ValueError, "fields contains NaN"),
]


@pytest.mark.parametrize("call,exc,match", BAD)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call(*_inputs(4, 3, 2))

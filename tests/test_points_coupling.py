"""sample_coupling and class_pair_ot (issue 12)."""

from __future__ import annotations

import pytest
import torch
from scipy import stats

from pytransfer.ot import class_pair_ot, sample_coupling, sinkhorn_points
from pytransfer.ot import points_reference as ref


def _problem(seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(5, 2, generator=gen, dtype=torch.float64)
    y = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    a = torch.tensor([0.3, 0.1, 0.25, 0.0, 0.35], dtype=torch.float64)  # one zero-mass row
    b = torch.tensor([0.05, 0.4, 0.05, 0.3, 0.15, 0.05], dtype=torch.float64)
    return x, y, a, b


def _chi2(counts, probs):
    keep = probs > 0
    assert counts[~keep].sum() == 0, "a pair outside the support was drawn"
    k = counts.sum()
    return stats.chisquare(counts[keep].numpy(), (k * probs[keep] / probs.sum()).numpy())


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_chi_square_against_the_dense_plan(backend):
    x, y, a, b = _problem()
    eps = 0.5
    res = sinkhorn_points(x, y, a, b, eps=eps, tol=1e-12, backend=backend)
    k = 20000
    i, j = sample_coupling(res, x, y, k, generator=torch.Generator().manual_seed(0))
    assert i.shape == j.shape == (k,)
    counts = torch.bincount(i * 6 + j, minlength=30).reshape(5, 6).double()
    cost = ref.point_cost(x[None], y[None], 2)
    P = ref.plan(cost, a[None], b[None], res.f[None], res.g[None], eps)[0]
    assert _chi2(counts.flatten(), P.flatten()).pvalue > 1e-3
    # power: a sampler that ignored g (columns ~ exp(-C/eps) within a row) is rejected
    Q = P.sum(-1, keepdim=True) * torch.softmax(-cost[0] / eps, -1)
    assert _chi2(counts.flatten(), Q.flatten()).pvalue < 1e-12
    # and so is one that ignored the row marginal (rows uniform on the support)
    R = (a > 0).double()[:, None] * (P / P.sum(-1, keepdim=True)).nan_to_num()
    assert _chi2(counts.flatten(), R.flatten()).pvalue < 1e-12


def test_batched_and_reproducible():
    x, y, a, b = _problem(1)
    X, Y = torch.stack([x, x + 1]), torch.stack([y, y * 2])
    res = sinkhorn_points(X, Y, a.expand(2, 5), b.expand(2, 6), eps=0.3, backend="cpu")
    i1, j1 = sample_coupling(res, X, Y, 7, generator=torch.Generator().manual_seed(3))
    i2, j2 = sample_coupling(res, X, Y, 7, generator=torch.Generator().manual_seed(3))
    assert i1.shape == (2, 7) and torch.equal(i1, i2) and torch.equal(j1, j2)
    assert bool((a[i1] > 0).all())


def test_sample_coupling_bad_input():
    x, y, a, b = _problem()
    res = sinkhorn_points(x, y, a, b, eps=0.5, backend="cpu")
    with pytest.raises(ValueError, match="k must be >= 1"):
        sample_coupling(res, x, y, 0)
    with pytest.raises(TypeError, match="k must be an int"):
        sample_coupling(res, x, y, 2.0)
    with pytest.raises(ValueError, match="do not match"):
        sample_coupling(res, x[:4], y, 3)
    with pytest.raises(TypeError, match="PointSinkhornResult"):
        sample_coupling(tuple(res), x, y, 3)


def _labelled(seed=0):
    gen = torch.Generator().manual_seed(seed)
    fs = torch.randn(13, 3, generator=gen, dtype=torch.float64)
    ys = torch.tensor([0, 1, 2, 0, 0, 1, 2, 2, 2, 0, 1, 0, 2])
    ft = torch.randn(11, 3, generator=gen, dtype=torch.float64) + 0.3
    yt = torch.tensor([1, 0, 0, 1, 1, 1, 0, 1, 0, 1, 1])
    return fs, ys, ft, yt


@pytest.mark.parametrize("debias", [True, False])
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_class_pair_ot_matches_per_pair_problems(debias, backend):
    fs, ys, ft, yt = _labelled()
    fs.requires_grad_(True)
    M = class_pair_ot(fs, ys, ft, yt, eps=0.5, debias=debias, tol=1e-11, max_iter=5000,
                      backend=backend)
    assert M.shape == (3, 2)
    for k in range(3):
        for c in range(2):
            want = sinkhorn_points(fs[ys == k].detach(), ft[yt == c], eps=0.5, debias=debias,
                                   tol=1e-11, max_iter=5000, backend="reference").objective
            torch.testing.assert_close(M[k, c].detach(), want, rtol=1e-8, atol=1e-10)
    if debias:
        assert bool((M > 0).all())
    (grad,) = torch.autograd.grad(M.sum(), fs)
    assert grad.shape == fs.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_class_pair_ot_gradient_matches_per_pair():
    fs, ys, ft, yt = _labelled(1)
    fs.requires_grad_(True)
    (got,) = torch.autograd.grad(class_pair_ot(fs, ys, ft, yt, eps=0.5, tol=1e-12,
                                               max_iter=5000, backend="cpu")[1, 0], fs)
    src = fs[ys == 1]
    (want,) = torch.autograd.grad(sinkhorn_points(src, ft[yt == 0], eps=0.5, debias=True,
                                                  tol=1e-12, max_iter=5000,
                                                  backend="reference").objective, fs)
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)


def test_class_pair_ot_empty_class():
    fs, ys, ft, yt = _labelled()
    with pytest.raises(ValueError, match="source class 1 has no samples"):
        class_pair_ot(fs, torch.where(ys == 1, 2, ys), ft, yt, eps=0.5)
    with pytest.raises(ValueError, match="target class 2 has no samples"):
        class_pair_ot(fs, ys, ft, yt, eps=0.5, num_target_classes=3)
    with pytest.raises(ValueError, match="one label per row"):
        class_pair_ot(fs, ys[:-1], ft, yt, eps=0.5)
    with pytest.raises(TypeError, match="integer class labels"):
        class_pair_ot(fs, ys.double(), ft, yt, eps=0.5)

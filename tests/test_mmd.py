"""pytransfer.mmd: every backend against numpy formulas (float64) and the reference, fused
gradients by gradcheck, custom ops by opcheck and torch.compile, estimator properties, kernel
weights against a brute-force simplex search, the class-pair cost matrix, MKMMDLoss."""

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pytransfer.mmd import (
    KernelSpec,
    _ops,
    bandwidth,
    class_pair_mmd,
    gaussian_kernels,
    mk_mmd,
    optimize_kernel_weights,
)
from pytransfer.mmd.spec import resolve
from pytransfer.nn.mmd_loss import MKMMDLoss


def feats(n, d, *, m=None, seed=0, shift=0.5, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    xs = torch.randn(n, d, generator=gen, dtype=dtype)
    xt = torch.randn(n if m is None else m, d, generator=gen, dtype=dtype) * 1.3 + shift
    return xs, xt


# ------------------------------------------------------------- numpy formulas (float64)
def np_k(a, b, sigma2, beta):
    return sum(w * np.exp(-np.sum((a - b) ** 2) / (2 * s)) for s, w in zip(sigma2, beta))


def np_linear(xs, xt, sigma2, beta):
    n = xs.shape[0] // 2 * 2
    g = [np_k(xs[i], xs[i + 1], sigma2, beta) + np_k(xt[i], xt[i + 1], sigma2, beta)
         - np_k(xs[i], xt[i + 1], sigma2, beta) - np_k(xs[i + 1], xt[i], sigma2, beta)
         for i in range(0, n, 2)]
    return 2.0 / n * sum(g)


def np_quadratic(xs, xt, sigma2, beta):
    n, m = len(xs), len(xt)
    kss = sum(np_k(xs[i], xs[j], sigma2, beta) for i in range(n) for j in range(n) if i != j)
    ktt = sum(np_k(xt[i], xt[j], sigma2, beta) for i in range(m) for j in range(m) if i != j)
    kst = sum(np_k(xs[i], xt[j], sigma2, beta) for i in range(n) for j in range(m))
    return kss / (n * (n - 1)) + ktt / (m * (m - 1)) - 2 * kst / (n * m)


def np_bandwidth(xs, xt):
    x = np.concatenate([xs, xt])
    N = len(x)
    return sum(np.sum((x[i] - x[j]) ** 2) for i in range(N) for j in range(N) if i != j) / (
        N * (N - 1))


def np_args(xs, xt, spec, beta=None):
    x, y = xs.numpy(), xt.numpy()
    base = np_bandwidth(x, y) if spec.base == "mean" else float(spec.base)
    U = spec.num
    beta = np.full(U, 1.0 / U) if beta is None else beta.numpy()
    return x, y, [mu * base for mu in spec.multipliers], beta


SPECS = {
    "pow2-19": gaussian_kernels(19),
    "pow2-5-fixed-base": gaussian_kernels(5, base=2.0),
    "mixed": gaussian_kernels(4, multipliers=[3.0, 0.5, 1.0, 0.7]),
}


@pytest.mark.parametrize("n,d", [(2, 1), (6, 1), (10, 3), (14, 7), (22, 5)])
@pytest.mark.parametrize("spec", list(SPECS), ids=list(SPECS))
def test_linear_matches_numpy(backend, n, d, spec):
    xs, xt = feats(n, d, seed=n * d)
    out = mk_mmd(xs, xt, kernels=SPECS[spec], backend=backend)
    want = np_linear(*np_args(xs, xt, SPECS[spec]))
    np.testing.assert_allclose(out.item(), want, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("n,m,d", [(2, 2, 1), (5, 7, 3), (11, 4, 2), (13, 13, 1), (3, 9, 6)])
@pytest.mark.parametrize("spec", list(SPECS), ids=list(SPECS))
def test_quadratic_matches_numpy(backend, n, m, d, spec):
    xs, xt = feats(n, d, m=m, seed=n + m * d)
    out = mk_mmd(xs, xt, kernels=SPECS[spec], estimator="quadratic", backend=backend)
    want = np_quadratic(*np_args(xs, xt, SPECS[spec]))
    np.testing.assert_allclose(out.item(), want, rtol=1e-9, atol=1e-12)


def test_weights_match_numpy(backend):
    xs, xt = feats(8, 3, seed=4)
    spec = gaussian_kernels(3)
    beta = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    for est, fn in (("linear", np_linear), ("quadratic", np_quadratic)):
        out = mk_mmd(xs, xt, kernels=spec, weights=beta, estimator=est, backend=backend)
        np.testing.assert_allclose(out.item(), fn(*np_args(xs, xt, spec, beta)), rtol=1e-10)


def test_bandwidth_matches_pairwise_mean():
    xs, xt = feats(7, 4, m=5, seed=1)
    xs = xs + 1e3  # a large common offset: the centred moments keep precision
    np.testing.assert_allclose(bandwidth(xs, xt).item(), np_bandwidth(xs.numpy(), xt.numpy()),
                               rtol=1e-10)
    np.testing.assert_allclose(bandwidth(xs.float(), xt.float()).item(),
                               np_bandwidth(xs.numpy(), xt.numpy()), rtol=1e-5)


@pytest.mark.parametrize("estimator", ["linear", "quadratic"])
def test_float32_matches_float64(backend, estimator):
    """Squaring runs are bounded (3 per exp in float32): 19 power-of-two kernels stay accurate."""
    xs, xt = feats(64, 33, seed=2)
    ref = mk_mmd(xs, xt, estimator=estimator, backend="reference")
    out = mk_mmd(xs.float(), xt.float(), estimator=estimator, backend=backend)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=2e-4, atol=2e-6)


def test_half_inputs_are_upcast():
    xs, xt = feats(8, 4, seed=3, dtype=torch.float32)
    out = mk_mmd(xs.half(), xt.bfloat16().half(), backend="cpu")
    ref = mk_mmd(xs.half().float(), xt.bfloat16().half().float(), backend="reference")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-7)


def test_non_contiguous_inputs(backend):
    xs, xt = feats(10, 6, seed=5)
    xs_nc, xt_nc = xs.t().contiguous().t(), torch.cat([xt, xt], 1)[:, ::2]
    assert not xs_nc.is_contiguous() and not xt_nc.is_contiguous()
    for est in ("linear", "quadratic"):
        ref = mk_mmd(xs, xt_nc.contiguous(), estimator=est, backend="reference")
        out = mk_mmd(xs_nc, xt_nc, estimator=est, backend=backend)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-13)


def test_drop_last_ignores_last_row(backend):
    xs, xt = feats(9, 3, seed=6)
    out = mk_mmd(xs, xt, drop_last=True, backend=backend)
    ref = mk_mmd(xs[:8], xt[:8], backend="reference")
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-14)


def test_quadratic_tiles_cover_all_pairs(monkeypatch):
    """Several row tiles (tiny tile size) give the one-tile result, forward and backward."""
    xs, xt = feats(9, 4, m=6, seed=7)
    grads = []
    for tile in (1 << 22, 20):
        monkeypatch.setattr(_ops, "TILE_ELEMENTS", tile)
        x = xs.clone().requires_grad_(True)
        out = mk_mmd(x, xt, estimator="quadratic", backend="cpu")
        out.backward()
        grads.append((out.detach(), x.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-12, atol=0)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------- gradients
@pytest.mark.parametrize("estimator", ["linear", "quadratic"])
@pytest.mark.parametrize("backend_name", ["cpu", "triton"])
def test_gradcheck_fused_backward(estimator, backend_name):
    xs, xt = feats(6, 3, seed=8)
    w = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    spec = gaussian_kernels(3, base=1.5)
    args = (xs.requires_grad_(True), xt.requires_grad_(True), w.requires_grad_(True))

    def fn(a, b, beta):
        return mk_mmd(a, b, kernels=spec, weights=beta, estimator=estimator,
                      backend=backend_name, check_inputs=False)

    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-9, rtol=1e-6)


@pytest.mark.parametrize("estimator", ["linear", "quadratic"])
def test_second_derivatives_through_the_standardisation(estimator):
    """The standardisation's backward (the gradients scaled, straight to xs and xt) is itself
    differentiable: gradgradcheck through the reference backend (a fixed bandwidth: one from
    the batch is detached, which finite differences do not see)."""
    xs, xt = feats(6, 3, seed=8)
    spec = gaussian_kernels(3, base=1.5)

    def fn(a, b):
        return mk_mmd(a, b, kernels=spec, estimator=estimator, backend="reference",
                      check_inputs=False)
    assert torch.autograd.gradgradcheck(fn, (xs.requires_grad_(True), xt.requires_grad_(True)))


@pytest.mark.parametrize("estimator", ["linear", "quadratic"])
def test_gradients_match_reference_float32(backend, estimator):
    xs, xt = feats(30, 17, seed=9, dtype=torch.float32)
    grads = {}
    for b in ("reference", backend):
        x, y = xs.clone().requires_grad_(True), xt.clone().requires_grad_(True)
        mk_mmd(x, y, estimator=estimator, backend=b).backward()
        grads[b] = (x.grad, y.grad)
    for g, r in zip(grads[backend], grads["reference"]):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)


def test_weight_gradient_is_per_kernel_estimate(backend):
    xs, xt = feats(12, 2, seed=10)
    spec = gaussian_kernels(3)
    w = torch.full((3,), 1 / 3, dtype=torch.float64, requires_grad=True)
    mk_mmd(xs, xt, kernels=spec, weights=w, backend=backend).backward()
    for u in range(3):
        one = torch.zeros(3, dtype=torch.float64)
        one[u] = 1
        torch.testing.assert_close(w.grad[u], mk_mmd(xs, xt, kernels=spec, weights=one))


# ------------------------------------------------------------- torch.library
def _op_args(n=6, d=3, dtype=torch.float64):
    xs, xt = feats(n, d, seed=11, dtype=dtype)
    w = torch.full((5,), 0.2, dtype=dtype)
    g, w, sq = resolve(gaussian_kernels(5), w, bandwidth(xs, xt), dtype)
    return xs, xt, g, w, sq


@pytest.mark.parametrize("name", ["cpu", "triton"])
def test_opcheck(name):
    xs, xt, g, w, sq = _op_args()
    fwd, bwd = _ops._LINEAR[name]
    _, coef = fwd(xs, xt, g, w, sq)
    grad = torch.tensor(0.7, dtype=xs.dtype)
    qfwd, qbwd = _ops._QUADRATIC[name]
    tests = ("test_schema", "test_faketensor", "test_aot_dispatch_static")
    for op, args in ((fwd, (xs, xt, g, w, sq)), (bwd, (xs, xt, coef, grad)),
                     (qfwd, (xs, xt, g, w, sq)), (qbwd, (xs, xt, g, w, sq, grad))):
        torch.library.opcheck(op, args, test_utils=tests)
    xs.requires_grad_(True)
    w.requires_grad_(True)
    for op in (_ops.mmd_linear, _ops.mmd_quadratic):
        torch.library.opcheck(op, (xs, xt, g, w, sq, name))


def test_torch_compile():
    xs, xt = feats(8, 3, seed=12)
    x = xs.clone().requires_grad_(True)

    def loss(a, b):
        return mk_mmd(a, b, kernels=gaussian_kernels(5, base=1.0), backend="cpu",
                      check_inputs=False) + mk_mmd(a, b, kernels=gaussian_kernels(5, base=1.0),
                                                   estimator="quadratic", backend="cpu",
                                                   check_inputs=False)

    out = torch.compile(loss, backend="aot_eager", fullgraph=True)(x, xt)
    out.backward()
    y = xs.clone().requires_grad_(True)
    ref = loss(y, xt)
    ref.backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(x.grad, y.grad)


# ------------------------------------------------------------- estimator properties
def test_linear_over_shuffles_is_the_u_statistic():
    """E over random pairings of the quad-tuple estimator = the quadratic U-statistic."""
    xs, xt = feats(12, 2, seed=13)
    spec = gaussian_kernels(5)
    gen = torch.Generator().manual_seed(0)
    vals = torch.stack([
        mk_mmd(xs[torch.randperm(12, generator=gen)], xt[torch.randperm(12, generator=gen)],
               kernels=spec, backend="cpu") for _ in range(3000)])
    quad = mk_mmd(xs, xt, kernels=spec, estimator="quadratic", backend="cpu")
    se = vals.std() / len(vals) ** 0.5
    assert abs(vals.mean() - quad) < 4 * se
    assert se < 0.1 * quad.abs()  # the test has power: the mean is pinned well below the value


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 8), st.integers(1, 5), st.integers(0, 2**16),
       st.floats(0.1, 10.0), st.floats(-5.0, 5.0))
def test_property_invariances(half, d, seed, scale, offset):
    n = 2 * half
    xs, xt = feats(n, d, m=n, seed=seed)
    lin = mk_mmd(xs, xt, backend="cpu")
    quad = mk_mmd(xs, xt, estimator="quadratic", backend="cpu") if n > 2 else None
    # translation and scale (the bandwidth follows the data) leave both estimates unchanged
    lin2 = mk_mmd(scale * xs + offset, scale * xt + offset, backend="cpu")
    torch.testing.assert_close(lin2, lin, rtol=1e-7, atol=1e-10)
    if quad is not None:
        quad2 = mk_mmd(scale * xs + offset, scale * xt + offset, estimator="quadratic",
                       backend="cpu")
        torch.testing.assert_close(quad2, quad, rtol=1e-7, atol=1e-10)
        # symmetric in the two samples
        swapped = mk_mmd(xt, xs, estimator="quadratic", backend="cpu")
        torch.testing.assert_close(swapped, quad, rtol=1e-10, atol=1e-13)
    # identical samples: every quad-tuple's g is exactly zero
    assert mk_mmd(xs, xs.clone(), backend="cpu").item() == 0.0


def test_separates_shifted_distributions():
    xs, xt = feats(512, 4, seed=14, shift=0.0)
    same = mk_mmd(xs, xt * (1 / 1.3), estimator="quadratic")
    shifted = mk_mmd(xs, xt + 1.0, estimator="quadratic")
    assert abs(same.item()) < 0.01 < shifted.item()


# ------------------------------------------------------------- kernel weights
def _brute_force_weights(xs, xt, spec, reg, step=0.0025):
    x, y, sigma2, _ = np_args(xs, xt, spec)
    g = np.array([[np_linear(x[i:i + 2], y[i:i + 2], [s], [1.0]) for s in sigma2]
                  for i in range(0, len(x), 2)])
    d, Q = g.mean(0), np.cov(g.T) + reg * np.eye(3)
    best, arg = -np.inf, None
    K = round(1 / step)
    for i, j in itertools.product(range(K + 1), range(K + 1)):
        if i + j <= K:
            b = np.array([i, j, K - i - j]) / K
            r = d @ b / np.sqrt(b @ Q @ b)
            if r > best:
                best, arg = r, b
    return best, arg, d, Q


@pytest.mark.parametrize("seed,mults", [(15, [4.0, 1.0, 0.25]), (16, [8.0, 0.5, 0.05]),
                                        (17, [1.0, 2.0, 4.0])])
def test_optimize_kernel_weights_vs_brute_force(seed, mults):
    xs, xt = feats(40, 3, seed=seed, shift=0.3)
    spec = gaussian_kernels(3, multipliers=mults)
    beta = optimize_kernel_weights(xs, xt, spec, reg=1e-4)
    best, arg, d, Q = _brute_force_weights(xs, xt, spec, 1e-4)
    b = beta.numpy()
    assert b.min() >= 0 and abs(b.sum() - 1) < 1e-12
    ratio = d @ b / np.sqrt(b @ Q @ b)
    assert ratio >= best - 1e-9 * abs(best)  # at least as good as every grid point
    np.testing.assert_allclose(b, arg, atol=0.01)


def test_optimize_weights_without_positive_estimate_picks_one_kernel():
    xs, _ = feats(20, 2, seed=18)
    beta = optimize_kernel_weights(xs, xs.clone(), gaussian_kernels(4))  # every g is 0
    assert sorted(beta.tolist()) == [0.0, 0.0, 0.0, 1.0]


# ------------------------------------------------------------- class-pair costs
def test_class_pair_mmd_matches_per_pair_numpy():
    gen = torch.Generator().manual_seed(19)
    fs = torch.randn(17, 3, generator=gen, dtype=torch.float64)
    ft = torch.randn(11, 3, generator=gen, dtype=torch.float64) + 0.4
    ys = torch.tensor([0, 1, 2] * 5 + [1, 2])
    yt = torch.tensor([0, 1] * 5 + [0])
    spec = gaussian_kernels(4, base=1.7)
    C = class_pair_mmd(fs, ys, ft, yt, kernels=spec)
    assert C.shape == (3, 2)
    sigma2 = [m * 1.7 for m in spec.multipliers]
    for a in range(3):
        for b in range(2):
            want = np_quadratic(fs[ys == a].numpy(), ft[yt == b].numpy(), sigma2, [0.25] * 4)
            np.testing.assert_allclose(C[a, b].item(), want, rtol=1e-10, atol=1e-13)


def test_class_pair_mmd_default_base_and_gradient():
    fs, ft = feats(12, 2, seed=20)
    ys, yt = torch.arange(12) % 3, torch.arange(12) % 2
    f = fs.clone().requires_grad_(True)
    C = class_pair_mmd(f, ys, ft, yt)
    base = bandwidth(fs, ft)
    spec = KernelSpec(gaussian_kernels().multipliers, base)
    want = mk_mmd(fs[ys == 1], ft[yt == 0], kernels=spec, estimator="quadratic")
    torch.testing.assert_close(C[1, 0], want, rtol=1e-10, atol=1e-13)
    C.sum().backward()
    assert torch.isfinite(f.grad).all() and f.grad.abs().sum() > 0


# ------------------------------------------------------------- nn module
def test_mkmmd_loss_module():
    xs, xt = feats(16, 5, seed=21)
    loss = MKMMDLoss()
    torch.testing.assert_close(loss(xs, xt), mk_mmd(xs, xt))
    opt = MKMMDLoss(kernels=gaussian_kernels(5), optimize_weights=True, estimator="quadratic")
    value = opt(xs, xt)
    beta = optimize_kernel_weights(xs, xt, gaussian_kernels(5))
    torch.testing.assert_close(opt.last_weights, beta)
    torch.testing.assert_close(value, mk_mmd(xs, xt, kernels=gaussian_kernels(5), weights=beta,
                                             estimator="quadratic"))

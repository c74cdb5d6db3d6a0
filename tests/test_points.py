"""Point-cloud Sinkhorn (issue 12): every backend against POT and the dense reference."""

from __future__ import annotations

import math

import numpy as np
import ot
import pytest
import torch

from pytransfer.ot import PointSinkhornResult, sinkhorn_points
from pytransfer.ot import points_reference as ref

BACKENDS = [("reference", None), ("cpu", False), ("cpu", True), ("triton", None)]
IDS = ["reference", "cpu-online", "cpu-cached", "triton"]


def clouds(n=7, m=5, d=3, B=None, dtype=torch.float64, seed=0, ragged=False):
    gen = torch.Generator().manual_seed(seed)
    lead = () if B is None else (B,)
    x = torch.randn(*lead, n, d, generator=gen, dtype=dtype)
    y = torch.randn(*lead, m, d, generator=gen, dtype=dtype) + 0.5
    a = torch.rand(*lead, n, generator=gen, dtype=dtype) + 0.2
    b = torch.rand(*lead, m, generator=gen, dtype=dtype) + 0.2
    if ragged:
        a[..., -2:] = 0
        b[..., 0] = 0
    return x, y, a / a.sum(-1, keepdim=True), b / b.sum(-1, keepdim=True)


def pot_plan(x, y, a, b, eps, p):
    """POT's log-domain plan on the support of a x b (zero elsewhere) and the dense cost."""
    M = ot.dist(x.double().numpy(), y.double().numpy(), metric="sqeuclidean")
    M = M / 2 if p == 2 else np.sqrt(M)
    a, b = a.double().numpy(), b.double().numpy()
    sa, sb = a > 0, b > 0
    P = np.zeros_like(M)
    P[np.ix_(sa, sb)] = ot.sinkhorn(a[sa], b[sb], M[np.ix_(sa, sb)], eps, method="sinkhorn_log",
                                    numItermax=100000, stopThr=1e-13)
    return torch.from_numpy(P), torch.from_numpy(M)


def kl_objective(P, M, a, b, eps):
    ab = np.outer(a, b)
    Pn = P.numpy()
    kl = np.sum(np.where(Pn > 0, Pn * np.log(np.where(Pn > 0, Pn, 1) / np.where(ab > 0, ab, 1)),
                         0)) - Pn.sum() + ab.sum()
    return float((P * M).sum()) + eps * kl


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("p", [2, 1])
@pytest.mark.parametrize(("backend", "cache"), BACKENDS, ids=IDS)
def test_against_pot(backend, cache, p, dtype):
    x, y, a, b = clouds(ragged=True)
    eps = 0.7
    P, M = pot_plan(x, y, a, b, eps, p)
    res = sinkhorn_points(x.to(dtype), y.to(dtype), a.to(dtype), b.to(dtype), eps=eps, p=p,
                          tol=1e-10 if dtype == torch.float64 else 1e-6, backend=backend,
                          cache=cache)
    assert bool(res.converged)
    rtol = 1e-7 if dtype == torch.float64 else 2e-4
    torch.testing.assert_close(res.transport_cost.double(), (P * M).sum(), rtol=rtol, atol=rtol)
    want = kl_objective(P, M, a.numpy(), b.numpy(), eps)
    assert float(res.objective) == pytest.approx(want, rel=rtol, abs=rtol)
    mine = ref.plan(M[None], a[None], b[None], res.f[None].double(), res.g[None].double(), eps)[0]
    torch.testing.assert_close(mine, P, rtol=10 * rtol, atol=10 * rtol)
    # zero-mass rows and columns: finite c-transforms, no mass
    assert torch.isfinite(res.f).all() and torch.isfinite(res.g).all()


@pytest.mark.parametrize(("backend", "cache"), BACKENDS, ids=IDS)
def test_batched_ragged_equals_unpadded(backend, cache):
    x, y, a, b = clouds(n=9, m=6, d=4, B=3, ragged=True, seed=1)
    res = sinkhorn_points(x, y, a, b, eps=2.0, tol=1e-11, backend=backend, cache=cache)
    for q in range(3):
        sa, sb = a[q] > 0, b[q] > 0
        one = sinkhorn_points(x[q][sa], y[q][sb], a[q][sa], b[q][sb], eps=2.0, tol=1e-11,
                              backend="reference")
        torch.testing.assert_close(res.objective[q], one.objective, rtol=1e-8, atol=1e-9)
        torch.testing.assert_close(res.f[q][sa], one.f, rtol=1e-7, atol=1e-8)
        torch.testing.assert_close(res.g[q][sb], one.g, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize(("backend", "cache"), BACKENDS, ids=IDS)
def test_fixed_iterations_match_reference(backend, cache):
    """Same iterates as the reference, iteration for iteration (tol=0, eps schedule)."""
    x, y, a, b = clouds(n=11, m=13, d=5, B=2, seed=2, ragged=True)
    kw = dict(eps=0.3, max_iter=3, tol=0.0, eps_scaling=0.7, debias=True)
    want = sinkhorn_points(x, y, a, b, backend="reference", **kw)
    got = sinkhorn_points(x, y, a, b, backend=backend, cache=cache, **kw)
    assert got.n_iter.tolist() == want.n_iter.tolist() == [len(want.eps_schedule) - 1 + 3] * 2
    for name in ("objective", "transport_cost", "f", "g", "marginal_error"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=1e-9,
                                   atol=1e-10)


def test_eps_schedule_is_geomloss():
    pytest.importorskip("geomloss")
    try:
        from geomloss._legacy import sinkhorn_divergence as geomloss
    except ImportError:  # geomloss < 0.3
        from geomloss import sinkhorn_divergence as geomloss
    x, y, _, _ = clouds(n=20, m=30, d=3)
    for p, blur, scaling in ((2, 0.05, 0.5), (1, 0.1, 0.8), (2, 0.3, 0.9)):
        want = geomloss.epsilon_schedule(p, geomloss.max_diameter(x, y), blur, scaling)
        got = sinkhorn_points(x, y, eps=blur**p, p=p, eps_scaling=scaling, max_iter=1,
                              backend="reference").eps_schedule
        np.testing.assert_allclose(got.numpy(), np.array(want, dtype=np.float64), rtol=1e-12)


def test_eps_scaling_converges_to_the_same_plan():
    x, y, a, b = clouds(n=15, m=12, d=2, seed=3)
    plain = sinkhorn_points(x, y, a, b, eps=0.05, tol=1e-10, max_iter=20000, backend="cpu")
    annealed = sinkhorn_points(x, y, a, b, eps=0.05, tol=1e-10, eps_scaling=0.5, backend="cpu")
    assert bool(annealed.converged) and bool(plain.converged)
    assert annealed.eps_schedule[0] > 1 and float(annealed.eps_schedule[-1]) == 0.05
    assert int(annealed.n_iter) > len(annealed.eps_schedule)
    torch.testing.assert_close(annealed.objective, plain.objective, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize(("backend", "cache"), BACKENDS, ids=IDS)
def test_debiased_divergence(backend, cache):
    x, y, a, b = clouds(n=8, m=6, d=3, seed=4)
    eps = 0.4
    res = sinkhorn_points(x, y, a, b, eps=eps, tol=1e-12, max_iter=20000, debias=True,
                          backend=backend, cache=cache)
    assert bool(res.converged)
    terms = []
    for u, v, wu, wv in ((x, y, a, b), (x, x, a, a), (y, y, b, b)):
        P, M = pot_plan(u, v, wu, wv, eps, 2)
        terms.append(kl_objective(P, M, wu.numpy(), wv.numpy(), eps))
    want = terms[0] - terms[1] / 2 - terms[2] / 2
    assert float(res.objective) == pytest.approx(want, rel=1e-7, abs=1e-9)
    assert float(res.objective) > 0
    if backend == "triton":
        return  # the interpreter is too slow for the 6400 iterations below
    # identical clouds: alternating Sinkhorn needs ~6400 iterations here (the symmetric terms
    # converge in ~30), so S_eps is ~0 only once the (a, b) problem has converged
    same = sinkhorn_points(x, x.clone(), a, a.clone(), eps=eps, tol=1e-12, max_iter=20000,
                           debias=True, backend=backend, cache=cache)
    assert bool(same.converged)
    assert abs(float(same.objective)) < 1e-10


def test_debiased_nonnegative_float32_many():
    x, y, _, _ = clouds(n=40, m=40, d=8, B=6, dtype=torch.float32, seed=5)
    y = x + 0.05 * y  # close clouds: S_eps small but >= 0
    res = sinkhorn_points(x, y, eps=0.5, debias=True, tol=1e-6, backend="cpu")
    assert (res.objective > -1e-5).all()


def _unrolled_objective(x, y, a, b, eps, p=2):
    cost = ref.point_cost(*ref.shift(x, y), p)
    f, g, _, _ = ref.solve_dense(cost, a, b, [eps], 3000, 1e-14)
    return ref.values_dense(cost, a, b, f, g, eps)[1]


@pytest.mark.parametrize(("backend", "cache"), BACKENDS, ids=IDS)
def test_gradients_match_autograd_through_the_dense_loop(backend, cache):
    x, y, a, b = clouds(n=6, m=5, d=3, B=2, seed=6)
    x.requires_grad_(True)
    a.requires_grad_(True)
    eps = 2.0  # fast convergence: few interpreted Triton launches
    want_x, want_a = torch.autograd.grad(_unrolled_objective(x, y, a, b, eps).sum(), (x, a))
    res = sinkhorn_points(x, y, a, b, eps=eps, tol=1e-13, backend=backend, cache=cache)
    got_x, got_a = torch.autograd.grad(res.objective.sum(), (x, a))
    torch.testing.assert_close(got_x, want_x, rtol=1e-7, atol=1e-9)
    center = want_a - want_a.mean(-1, keepdim=True)  # weights' gradient is up to a constant
    torch.testing.assert_close(got_a, center, rtol=1e-7, atol=1e-9)
    # p=2 closed form: grad_x_i = sum_j P_ij (x_i - y_j)
    cost = ref.point_cost(x.detach(), y, 2)
    P = ref.plan(cost, a.detach(), b, res.f, res.g, eps)
    closed = P.sum(-1, keepdim=True) * x.detach() - P @ y
    torch.testing.assert_close(got_x, closed, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("p", [2, 1])
@pytest.mark.parametrize("debias", [False, True])
def test_gradcheck(p, debias):
    x, y, a, b = clouds(n=4, m=3, d=2, seed=7)

    def fn(x, y, a, b):
        return sinkhorn_points(x, y, a, b, eps=0.6, p=p, tol=1e-14, max_iter=100000,
                               debias=debias, backend="cpu", check_inputs=False).objective

    inputs = tuple(t.clone().requires_grad_(True) for t in (x, y))
    assert torch.autograd.gradcheck(lambda x, y: fn(x, y, a, b), inputs, atol=1e-6)


def test_opcheck():
    from pytransfer.ot import points

    x, y, a, b = clouds(n=5, m=4, d=3, B=2, seed=8)
    sched = torch.tensor([2.0, 0.5], dtype=torch.float64)
    torch.library.opcheck(points.sinkhorn_points_cpu, (x, y, a, b, sched, 2, 50, 1e-9, False,
                                                       False))
    f, g, _, _ = points.sinkhorn_points_cpu(x, y, a, b, sched, 2, 200, 1e-12, False, False)
    for want_grad in (True, False):
        torch.library.opcheck(points.sinkhorn_points_rows,
                              (x, y, a, b, f, g, 0.5, 1, "cpu", want_grad))
    for backend in ("cpu", "reference"):
        args = (x.requires_grad_(True), y.requires_grad_(True), a.requires_grad_(True),
                b.requires_grad_(True), f, g, 0.5, 2, False, backend)
        torch.library.opcheck(points.sinkhorn_points_values, args)
        x, y, a, b = (t.detach() for t in (x, y, a, b))


def test_half_and_noncontiguous_inputs():
    x, y, a, b = clouds(n=10, m=7, d=4, dtype=torch.float32, seed=9)
    xt = x.t().contiguous().t()  # same values, non-contiguous
    assert not xt.is_contiguous()
    want = sinkhorn_points(x, y, a, b, eps=0.5, backend="reference")
    got = sinkhorn_points(xt, y[::1], a, b, eps=0.5, backend="cpu")
    torch.testing.assert_close(got.objective, want.objective, rtol=1e-5, atol=1e-6)
    half = sinkhorn_points(x.half(), y.half(), eps=0.5, backend="cpu")
    assert half.objective.dtype == torch.float32 and torch.isfinite(half.objective)


def test_single_point_and_result_type():
    x = torch.zeros(1, 3, dtype=torch.float64)
    y = torch.ones(1, 3, dtype=torch.float64)
    res = sinkhorn_points(x, y, eps=0.1, backend="cpu")
    assert isinstance(res, PointSinkhornResult)
    assert float(res.transport_cost) == pytest.approx(1.5)  # |x - y|^2 / 2, d = 3
    assert float(res.objective) == pytest.approx(1.5)  # P = a b^T: KL = 0


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (dict(y=torch.zeros(4, 2)), ValueError, "same feature dimension"),
        (dict(x=torch.zeros(5, 0), y=torch.zeros(4, 0)), ValueError, "d >= 1"),
        (dict(x=torch.zeros(0, 3)), ValueError, "n=0"),
        (dict(y=torch.zeros(0, 3)), ValueError, "m=0"),
        (dict(p=3), ValueError, "p must be 1 or 2"),
        (dict(p=True), ValueError, "p must be 1 or 2"),
        (dict(eps_scaling=1.0), ValueError, "eps_scaling"),
        (dict(eps_scaling=0.0), ValueError, "eps_scaling"),
        (dict(eps=0.0), ValueError, "eps"),
        (dict(eps=float("nan")), ValueError, "eps"),
        (dict(max_iter=0), ValueError, "max_iter"),
        (dict(tol=-1.0), ValueError, "tol"),
        (dict(x=torch.zeros(5, 3, dtype=torch.int64)), TypeError, "x must have a floating"),
        (dict(y=torch.zeros(4, 3, dtype=torch.float64)), TypeError, "one float dtype"),
        (dict(x=torch.full((5, 3), float("nan"))), ValueError, "x contains NaN"),
        (dict(a=-torch.ones(5) / 5), ValueError, "a has negative"),
        (dict(a=torch.zeros(5)), ValueError, "zero total mass"),
        (dict(a=torch.ones(5)), ValueError, "equal total mass"),
        (dict(a=torch.ones(4) / 4), ValueError, "a must have shape"),
        (dict(x=torch.zeros(2, 5, 3), y=torch.zeros(3, 4, 3)), ValueError, "batch size"),
        (dict(x=torch.zeros(5, 3), y=torch.zeros(1, 4, 3)), ValueError, "y must be 2-D"),
        (dict(backend="gpu"), ValueError, "backend"),
    ],
)
def test_bad_input(kwargs, exc, match):
    args = dict(x=torch.zeros(5, 3), y=torch.zeros(4, 3), eps=0.5)
    args.update(kwargs)
    x, y = args.pop("x"), args.pop("y")
    with pytest.raises(exc, match=match):
        sinkhorn_points(x, y, **args)


@pytest.mark.slow
def test_memory_stays_linear():
    """n = m = 20000, d = 64: a dense float32 cost alone would take 1.6 GB."""
    import subprocess
    import sys

    code = """
import resource, torch
from pytransfer.ot import sinkhorn_points
x = torch.randn(20000, 64); y = torch.randn(20000, 64)
torch.set_num_threads(2)
sinkhorn_points(x[:64], y[:64], eps=1.0, backend="cpu", cache=False)  # warm-up imports
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
res = sinkhorn_points(x, y, eps=10.0, max_iter=1, tol=0.0, backend="cpu", cache=False)
assert torch.isfinite(res.objective), res
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=600, check=True)
    growth_mib = float(out.stdout.strip().splitlines()[-1])
    assert growth_mib < 100, f"peak RSS grew by {growth_mib:.0f} MiB"


def test_auto_cache_rule():
    from pytransfer.ot import points

    assert points._use_cache(None, "cpu", 1, 4096, 4096, 4, True)
    assert not points._use_cache(None, "cpu", 1, 20000, 20000, 4, False)
    assert not points._use_cache(None, "reference", 1, 10, 10, 4, False)
    assert math.isfinite(points.CACHE_BYTES)

"""Scaling-form Sinkhorn (issue 4): same results as the log domain, absorption, auto switch."""

import pytest
import torch
from conftest import random_problem
from hypothesis import given, settings
from hypothesis import strategies as st

from pytransfer.ot import _ops, scaling, sinkhorn

FIELDS = ("transport_cost", "objective", "f", "g", "marginal_error")
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-6)}


def _assert_same(x, y, dtype, fields=FIELDS):
    for name in fields:
        torch.testing.assert_close(getattr(x, name), getattr(y, name), **TOL[dtype], msg=name)
    assert torch.equal(x.n_iter, y.n_iter)


def _padded(dtype):
    a, b, C = random_problem(6, 9, 5, dtype=dtype, seed=21)
    a[0, 3] = 0  # zero-mass row and column (padding)
    b[1, 4] = 0
    return a / a.sum(-1, keepdim=True), b / b.sum(-1, keepdim=True), C


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_scaling_equals_log(backend, dtype):
    a, b, C = _padded(dtype)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    log = sinkhorn(a, b, C, 0.07, tol=tol, method="log", backend="cpu")
    out = sinkhorn(a, b, C, 0.07, tol=tol, method="scaling", backend=backend)
    fields = FIELDS if dtype == torch.float64 else FIELDS[:4]  # fp32 errors are rounding-level
    _assert_same(out, log, dtype, fields)


@pytest.mark.parametrize("grad", ["dual", "implicit"])
def test_gradients_equal_log(grad):
    a, b, C = _padded(torch.float64)
    grads = []
    for method in ("log", "scaling"):
        x = [t.clone().requires_grad_(True) for t in (a, b, C)]
        res = sinkhorn(*x, 0.1, tol=1e-12, grad=grad, method=method)
        (res.transport_cost.sum() + 0.5 * res.objective.sum()).backward()
        grads.append([t.grad for t in x])
    for gs, gl in zip(*grads):
        torch.testing.assert_close(gs, gl, rtol=1e-9, atol=1e-11)


def test_auto_switches_at_threshold_without_jump():
    a, b, C = random_problem(4, 8, 6, dtype=torch.float64, seed=3)
    limit = scaling.AUTO_RANGE[torch.float64]
    span = float(C.max() - C.min())
    eps_scaling, eps_log = span / (limit * 0.999), span / (limit * 1.001)
    assert scaling.scaling_range(C, eps_scaling) < limit < scaling.scaling_range(C, eps_log)
    values = []
    for eps in (eps_scaling, eps_log):
        auto = sinkhorn(a, b, C, eps, tol=1e-9, max_iter=100000)
        log = sinkhorn(a, b, C, eps, tol=1e-9, max_iter=100000, method="log")
        _assert_same(auto, log, torch.float64)
        values.append(auto.transport_cost)
    torch.testing.assert_close(values[0], values[1], rtol=1e-3, atol=0)  # eps moved 0.2 %


def test_auto_picks_log_for_batched_cost_or_unrolled(monkeypatch):
    calls = []
    monkeypatch.setattr(scaling, "sinkhorn_scaling", lambda *args, **kw: calls.append(1))
    a, b, C = random_problem(2, 3, 4, shared=False)
    sinkhorn(a, b, C, 0.1)
    sinkhorn(a, b, C[0], 0.1, grad="unrolled", backend="reference")
    assert calls == []


def _tiny_and_large_weights():
    """a entries of 1e-6 next to 0.5 and a cost range of 650 / eps (beyond the auto threshold,
    within float64's): the scalings leave the safe range."""
    a, b, C = random_problem(3, 6, 5, dtype=torch.float64, seed=4)
    a[:, :3] = 1e-6
    a[:, 3] = 0.5
    a = a / a.sum(-1, keepdim=True)
    return a, b, C, float(C.max() - C.min()) / 650.0


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_absorption_with_tiny_and_large_weights(backend):
    """Forced scaling: problems are absorbed, finish in the log domain, equal the log path."""
    a, b, C, eps = _tiny_and_large_weights()
    log = sinkhorn(a, b, C, eps, tol=1e-9, max_iter=50000, method="log", backend="cpu")
    out = sinkhorn(a, b, C, eps, tol=1e-9, max_iter=50000, method="scaling", backend=backend)
    for x in out[:6]:
        assert torch.isfinite(x.double()).all()
    torch.testing.assert_close(out.transport_cost, log.transport_cost, rtol=1e-8, atol=0)
    torch.testing.assert_close(out.f, log.f, rtol=0, atol=1e-8)
    assert bool(out.converged.all())
    with pytest.raises(ValueError, match="underflows"):  # beyond float64's exponent range
        sinkhorn(a, b, C, eps * 650 / 800, method="scaling", backend=backend)


def test_absorption_happens_in_both_implementations(monkeypatch):
    a, b, C, eps = _tiny_and_large_weights()
    *_, absorbed = _ops.scaling_cpu_with_flags(a, b, C[None], eps, 50000, 1e-9)
    assert bool(absorbed.any())
    calls = []
    real = _ops.sinkhorn_log_reference
    scaling.sinkhorn_scaling(a, b, C[None], eps, 50000, 1e-9, scaling.div_reference,
                             lambda *x: calls.append(len(x[0])) or real(*x))
    assert sum(calls) == int(absorbed.sum())  # the same problems are absorbed


def test_triton_flags_out_of_range_problems(monkeypatch):
    """The Triton kernel flags problems whose scalings leave the safe range; they are re-solved
    in the log domain."""
    a, b, C = random_problem(4, 5, 3, dtype=torch.float64, seed=5)
    monkeypatch.setitem(scaling.SAFE_RANGE, torch.float64, (0.5, 2.0))
    resolved = []
    real = _ops.sinkhorn_log_triton
    monkeypatch.setattr(_ops, "sinkhorn_log_triton",
                        lambda a, *rest: resolved.append(len(a)) or real(a, *rest))
    out = sinkhorn(a, b, C, 0.1, tol=1e-10, method="scaling", backend="triton")
    log = sinkhorn(a, b, C, 0.1, tol=1e-10, method="log", backend="cpu")
    assert sum(resolved) >= 1
    _assert_same(out, log, torch.float64)


def test_absorbed_problems_continue_from_their_potentials(monkeypatch):
    """A tight safe range forces absorption mid-run; the log-domain continuation reaches the
    same fixed point, with the iterations of both phases counted."""
    a, b, C = random_problem(5, 7, 6, dtype=torch.float64, seed=8)
    monkeypatch.setitem(scaling.SAFE_RANGE, torch.float64, (0.2, 5.0))
    seen = []
    real_log = _ops.sinkhorn_log_reference

    def spy(*args):
        seen.append(args[-1] is not None)
        return real_log(*args)

    out = scaling.sinkhorn_scaling(a, b, C[None], 0.05, 5000, 1e-11, scaling.div_reference, spy)
    log = sinkhorn(a, b, C, 0.05, tol=1e-11, max_iter=5000, method="log")
    assert seen and all(seen)  # absorbed, warm-started
    torch.testing.assert_close(out[0], log.f, rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(out[1], log.g, rtol=1e-8, atol=1e-9)
    assert bool((out[2] >= log.n_iter - 2).all())


def test_early_exit_per_problem_matches_log():
    a, b, _ = random_problem(6, 8, 7, seed=2)
    C = torch.rand(8, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    a[:3] = torch.full((3, 8), 1 / 8, dtype=a.dtype)  # near-uniform problems converge fast
    log = sinkhorn(a, b, C, 0.03, tol=1e-10, max_iter=20000, method="log")
    out = sinkhorn(a, b, C, 0.03, tol=1e-10, max_iter=20000, method="scaling")
    assert len(set(out.n_iter.tolist())) > 1
    _assert_same(out, log, torch.float64)


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 7), st.integers(1, 7), st.integers(1, 4), st.integers(0, 2**16),
       st.sampled_from([0.02, 0.1, 1.0]))
def test_property_scaling_matches_log(n, m, B, seed, eps):
    a, b, C = random_problem(B, n, m, seed=seed)
    log = sinkhorn(a, b, C, eps, tol=1e-10, max_iter=50000, method="log")
    out = sinkhorn(a, b, C, eps, tol=1e-10, max_iter=50000, method="scaling", return_plan=True)
    _assert_same(out, log, torch.float64)
    torch.testing.assert_close(out.plan.sum(-2), b, atol=1e-12, rtol=0)


@pytest.mark.parametrize("op", [_ops.sinkhorn_scaling_cpu, _ops.sinkhorn_scaling_triton])
def test_opcheck_scaling(op):
    a, b, C = random_problem(3, 5, 4)
    torch.library.opcheck(op, (a, b, C[None], 0.1, 100, 1e-8))


@pytest.mark.parametrize("kwargs,match", [
    (dict(method="scaling", cost_batched=True), "needs a shared"),
    (dict(method="scaling", grad="unrolled", backend="reference"), "method='log'"),
    (dict(method="gemm"), "method must be one of"),
])
def test_bad_method(kwargs, match):
    a, b, C = random_problem(2, 3, 4, shared=not kwargs.pop("cost_batched", False))
    with pytest.raises(ValueError, match=match):
        sinkhorn(a, b, C, 0.1, **kwargs)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("per_problem", [True, False])
def test_both_cpu_strategies_equal_log(monkeypatch, dtype, per_problem):
    """The C++ backend switches from batched GEMMs to the per-problem kernel with B; both
    give the log domain's results."""
    monkeypatch.setattr(_ops, "PER_PROBLEM_BYTES", 0 if per_problem else 1 << 60)
    a, b, C = _padded(dtype)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    log = sinkhorn(a, b, C, 0.07, tol=tol, method="log", backend="cpu")
    out = sinkhorn(a, b, C, 0.07, tol=tol, method="scaling", backend="cpu")
    _assert_same(out, log, dtype, FIELDS if dtype == torch.float64 else FIELDS[:4])

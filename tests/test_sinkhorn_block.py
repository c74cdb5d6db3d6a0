"""The blocked scaling-form C++ kernel (issue 13): equal to the log domain and the reference,
per-problem exit as if solved alone, absorption, the fused dual op and its gradients."""

import pytest
import torch
from conftest import random_problem

from pytransfer.ot import _ops, block, scaling, sinkhorn
from pytransfer.ot.reference import (
    plan_from_potentials,
    sinkhorn_log_reference,
    values_from_plan,
)

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=2e-5, atol=2e-6)}


def _problem(B, n, m, dtype, seed=0):
    """Normalised weights with zero-mass (padding) entries in some problems."""
    a, b, C = random_problem(B, n, m, dtype=dtype, seed=seed)
    if n > 1:
        a[0, n - 1] = 0
    if m > 1 and B > 1:
        b[B - 1, 0] = 0
    return a / a.sum(-1, keepdim=True), b / b.sum(-1, keepdim=True), C


def _solve(a, b, C, eps, max_iter, tol, **kw):
    return block.solve(a.contiguous(), b.contiguous(), C[None].contiguous(), eps, max_iter, tol,
                       values=True, **kw)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("B,n,m", [(1, 1, 1), (1, 1, 5), (3, 7, 1), (17, 5, 5), (37, 13, 11),
                                   (9, 78, 22), (61, 13, 7)])
@pytest.mark.parametrize("stop", [False, True])
def test_block_equals_log_and_reference(dtype, B, n, m, stop):
    """(B = 37, 61: the last problems of a block finish in the narrower tail block, some at its
    first exit test.)"""
    tol = (1e-10 if dtype == torch.float64 else 1e-5) if stop else 0.0
    a, b, C = _problem(B, n, m, dtype, seed=n * m + B)
    f, g, n_iter, err, absorbed, converged, tc, obj, fc, gc = _solve(a, b, C, 0.08, 200, tol)
    log = _ops.sinkhorn_log_cpu(a, b, C[None], 0.08, 200, tol)
    ref = sinkhorn_log_reference(a.double(), b.double(), C[None].double(), 0.08, 200, tol)
    assert not absorbed.any()
    assert torch.equal(converged, err <= tol * a.sum(-1))
    if dtype == torch.float64:
        assert torch.equal(n_iter, log[2]) and torch.equal(n_iter, ref[2])
    else:  # rounding may move a stop by an iteration; compare at a fixed count
        assert (n_iter - log[2]).abs().max() <= 1 if tol > 0 else torch.equal(n_iter, log[2])
    if tol == 0 or dtype == torch.float64:
        for x, y in zip((f, g, err), log[:2] + log[3:], strict=True):
            torch.testing.assert_close(x, y, **TOL[dtype])
        torch.testing.assert_close(f.double(), ref[0], **TOL[torch.float32])
    # values and centred potentials against the plan formed from the returned potentials
    a64, b64, C64 = a.double(), b.double(), C[None].double()
    plan = plan_from_potentials(a64, b64, C64, f.double(), g.double(), 0.08)
    tc_ref, obj_ref = values_from_plan(a64, b64, C64, plan, f.double(), g.double(), 0.08)
    torch.testing.assert_close(tc.double(), tc_ref, **TOL[dtype])
    torch.testing.assert_close(obj.double(), obj_ref, **TOL[dtype])
    sa, sb = a > 0, b > 0
    torch.testing.assert_close(fc, f - (f * sa).sum(-1, keepdim=True) / sa.sum(-1, keepdim=True),
                               **TOL[dtype])
    torch.testing.assert_close(gc, g - (g * sb).sum(-1, keepdim=True) / sb.sum(-1, keepdim=True),
                               **TOL[dtype])


@pytest.mark.parametrize("max_iter", [5000, 100])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_per_problem_exit_equals_solving_alone(dtype, max_iter):
    """Mixed easy and hard problems refill lanes at different times (max_iter=100: some
    converge, others stop at the cap, at different block iterations); each problem's results
    are bit-for-bit those of solving it alone (every output; the block narrows for its tail at
    some iteration of each problem, and alone at the first)."""
    a, b, C = _problem(40, 9, 6, dtype, seed=3)
    a[::3] = 1 / 9  # near-uniform rows converge sooner
    together = _solve(a, b, C, 0.03, max_iter, 1e-6)
    assert len(set(together[2].tolist())) > 3
    if max_iter == 100:
        assert (together[2] == max_iter).any() and (together[2] < max_iter).any()
    for p in range(40):
        alone = _solve(a[p:p + 1], b[p:p + 1], C, 0.03, max_iter, 1e-6)
        for x, y in zip(together, alone, strict=True):
            assert torch.equal(x[p:p + 1], y)


def test_absorption_continues_in_the_log_domain(monkeypatch):
    """A tight safe range forces absorption mid-run in some problems; they finish in the log
    domain (warm-started) at the log domain's fixed point, the others are unaffected."""
    a, b, C = random_problem(20, 7, 6, seed=8)
    a[:5, :3] = 1e-4  # tiny weights: tiny scalings
    a = a / a.sum(-1, keepdim=True)
    monkeypatch.setitem(scaling.SAFE_RANGE, torch.float64, (1e-3, 1e4))
    out = _solve(a, b, C, 0.05, 5000, 1e-11)
    log = sinkhorn(a, b, C, 0.05, tol=1e-11, max_iter=5000, method="log")
    assert out[4][:5].all() and not out[4][5:].any()
    torch.testing.assert_close(out[0], log.f, rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(out[1], log.g, rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(out[6], log.transport_cost, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(out[7], log.objective, rtol=1e-8, atol=1e-12)
    assert out[5].all()
    assert bool((out[2] >= log.n_iter - 2).all())


def test_fused_dual_op_matches_the_two_op_path():
    """sinkhorn(method="scaling", grad="dual") on CPU runs one op; its values and gradients
    (a, b, C; both values) equal the log-domain path's sinkhorn_values."""
    a, b, C = _problem(5, 6, 4, torch.float64, seed=2)
    grads, values = [], []
    for method in ("log", "scaling"):
        x = [t.clone().requires_grad_(True) for t in (a, b, C)]
        res = sinkhorn(*x, 0.1, tol=1e-12, method=method, backend="cpu")
        (res.transport_cost.sum() + 0.3 * res.objective.sum()).backward()
        grads.append([t.grad for t in x])
        values.append((res.transport_cost.detach(), res.objective.detach(), res.f, res.g))
    for x, y in zip(values[0] + tuple(grads[0]), values[1] + tuple(grads[1]), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-11)


def test_fused_dual_transport_gradient_only_when_used():
    """Only the transport cost used: the objective's gradient terms are not formed (and the
    result still equals the log path); d/dC is the plan summed over problems."""
    a, b, C = _problem(3, 5, 4, torch.float64, seed=5)
    C.requires_grad_(True)
    res = sinkhorn(a, b, C, 0.1, tol=1e-12, method="scaling", backend="cpu")
    (gC,) = torch.autograd.grad(res.transport_cost.sum(), C)
    plan = sinkhorn(a, b, C.detach(), 0.1, tol=1e-12, method="log", return_plan=True).plan
    torch.testing.assert_close(gC, plan.sum(0), rtol=1e-9, atol=1e-12)


def test_gradcheck_fused_objective_is_exact():
    a, b, C = random_problem(2, 4, 3, seed=6)

    def fn(da, db, C):
        z = lambda x: x - x.mean(-1, keepdim=True)  # noqa: E731
        return sinkhorn(a + z(da), b + z(db), C, 0.2, tol=1e-15, max_iter=100000,
                        method="scaling", backend="cpu").objective

    args = (torch.zeros_like(a, requires_grad=True), torch.zeros_like(b, requires_grad=True),
            C.requires_grad_(True))
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-7, rtol=1e-4)


def test_eager_path_equals_the_op():
    a, b, C = _problem(4, 5, 3, torch.float64)
    for x, y in zip(block.sinkhorn_dual(a, b, C[None], 0.1, 50, 1e-9),
                    block.sinkhorn_dual_cpu(a, b, C[None], 0.1, 50, 1e-9), strict=True):
        assert torch.equal(x, y)


def test_opcheck_fused_dual_op():
    a, b, C = _problem(3, 5, 4, torch.float64)
    torch.library.opcheck(block.sinkhorn_dual_cpu, (a, b, C[None], 0.1, 100, 1e-8))
    a.requires_grad_(True)
    torch.library.opcheck(block.sinkhorn_dual_cpu, (a, b, C[None], 0.1, 100, 1e-8))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gemm_loop_choice_equals_log(monkeypatch, dtype):
    """Where the cost model picks the batched GEMM loop (forced here), results equal too."""
    monkeypatch.setattr(block, "GEMM_MIN_ELEMENTS", 0)
    a, b, C = _problem(2, 9, 5, dtype)
    assert block.use_gemm_loop(2, 9, 5, dtype, 1)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    out = sinkhorn(a, b, C, 0.07, tol=tol, method="scaling", backend="cpu")
    log = sinkhorn(a, b, C, 0.07, tol=tol, method="log", backend="cpu")
    for name in ("transport_cost", "objective", "f", "g"):
        torch.testing.assert_close(getattr(out, name), getattr(log, name), **TOL[dtype])


def test_cost_model():
    assert not block.use_gemm_loop(1, 78, 22, torch.float32, 1)  # small K: always blocks
    assert block.use_gemm_loop(1, 1024, 1024, torch.float32, 1)  # 15 of 16 lanes idle
    assert not block.use_gemm_loop(64, 1024, 1024, torch.float32, 1)
    assert block.use_gemm_loop(64, 1024, 1024, torch.float32, 8)  # 4 blocks, 8 threads


@pytest.mark.parametrize("bad,match", [
    (dict(a_nan=True), "a contains NaN"), (dict(neg=True), "negative"),
    (dict(mass=True), "equal total mass"), (dict(cost_nan=True), "cost contains NaN"),
])
def test_one_pass_checks_find_what_the_torch_checks_name(bad, match):
    a, b, C = random_problem(3, 4, 5)
    if bad.get("a_nan"):
        a[1, 2] = float("nan")
    if bad.get("neg"):
        b[2, 0] = -b[2, 0]
    if bad.get("mass"):
        a[1] *= 1.001
    if bad.get("cost_nan"):
        C[3, 4] = float("nan")
    ok, _, _ = block.check(a, b, C, 1e-5)
    assert not ok
    with pytest.raises(ValueError, match=match):
        sinkhorn(a, b, C, 0.1)


def test_one_pass_check_returns_the_cost_span():
    a, b, C = random_problem(3, 4, 5, scale=3.0)
    ok, span, big = block.check(a, b, C, 1e-5)
    assert ok and span == pytest.approx(float(C.max() - C.min()), rel=1e-15)
    assert big == pytest.approx(float(C.abs().max()), rel=1e-15)


@pytest.mark.parametrize("need", ["a", "ab", "abC"])
def test_transport_only_function_equals_the_op(need):
    """``objective_grad=False`` (OTLoss): same outputs, and the same transport-cost gradients
    as the registered op's autograd, for each set of inputs needing one."""
    a0, b0, C0 = _problem(4, 5, 3, torch.float64)
    w = torch.rand(4, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    grads = []
    for fn in (lambda *x: block.sinkhorn_dual(*x, objective_grad=False),
               block.sinkhorn_dual_cpu):
        a, b, C = (x.clone().requires_grad_(k in need) for x, k in ((a0, "a"), (b0, "b"),
                                                                      (C0[None], "C")))
        out = fn(a, b, C, 0.1, 200, 1e-10)
        assert out[1].requires_grad == (fn is block.sinkhorn_dual_cpu)
        (w * out[0]).sum().backward()
        grads.append((*out, *(x.grad for x in (a, b, C) if x.requires_grad)))
    for x, y in zip(*grads, strict=True):
        torch.testing.assert_close(x.detach(), y.detach(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_eps_underflow_check_uses_the_one_pass_max_abs(sign):
    """The eps check takes max |C| from the C++ value check (a negative cost's min counts),
    and rejects like the torch pass does on a non-contiguous copy of the same cost."""
    a, b = torch.full((2, 3), 1 / 3), torch.full((2, 4), 0.25)
    C = sign * (torch.rand(3, 4, generator=torch.Generator().manual_seed(0)) * 1e3 + 1)
    Ct = C.t().contiguous().t()  # same values, not contiguous: the torch checks
    for cost in (C, Ct):
        with pytest.raises(ValueError, match=r"too small for this cost .* max\|C\|/eps"):
            sinkhorn(a, b, cost, 1e-37)
    assert torch.isfinite(sinkhorn(a, b, C, 100.0).objective).all()  # a usable eps passes


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tol", [0.0, 1e-4, 1e-30])
@pytest.mark.parametrize("B,n,m,max_iter", [(1, 2, 2, 100), (37, 13, 11, 100), (40, 9, 6, 300),
                                            (33, 78, 22, 60), (5, 1, 5, 100)])
def test_fixed_point_stop_is_bit_identical(dtype, tol, B, n, m, max_iter):
    """A lane stops computing once its v repeats bit for bit (an exact floating-point fixed
    point); every output, n_iter and the values included, equals running every iteration.
    tol=1e-30 is never met: those problems run to max_iter through their fixed points."""
    a, b, C = _problem(B, n, m, dtype, seed=B + n)
    a[::4] = 1 / n  # some problems reach their fixed point sooner than others
    a = a / a.sum(-1, keepdim=True)
    g0 = 0.01 * torch.randn(B, m, generator=torch.Generator().manual_seed(1)).to(dtype)
    for g_init in (None, g0):
        args = (a, b, C[None].contiguous(), 0.1, max_iter, tol, True, g_init)
        stop, full = block.solve(*args), block.solve(*args, fixed_stop=False)
        for x, y in zip(stop, full, strict=True):
            assert torch.equal(x, y)
    if tol == 0.0:  # the returned iterate is that of max_iter iterations
        assert bool((stop[2] == max_iter).all())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("tol", [0.0, 1e-6])
def test_threads_give_the_same_bits(dtype, tol):
    """Two threads split the batch into four ranges, each with its own refills and narrowed
    tail: every output of every problem equals the one-thread solve bit for bit."""
    a, b, C = _problem(70, 13, 7, dtype, seed=5)
    a[::3] = 1 / 13
    a = a / a.sum(-1, keepdim=True)
    args = (a, b, C[None].contiguous(), 0.05, 150, tol, True)
    one = block.solve(*args)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        two = block.solve(*args)
    finally:
        torch.set_num_threads(before)
    for x, y in zip(one, two, strict=True):
        assert torch.equal(x, y)


def test_fixed_point_reached_before_max_iter():
    """Most float32 problems reach an exact fixed point well inside 100 iterations (what the
    stop saves): their rows at max_iter 60, 100 and 400 are the same, bit for bit."""
    a, b, C = _problem(64, 7, 5, torch.float32, seed=4)
    outs = [_solve(a, b, C, 0.1, k, 0.0, fixed_stop=False) for k in (60, 100, 400)]
    fixed = torch.ones(64, dtype=torch.bool)
    for other in outs[1:]:
        for x, y in zip(outs[0][:2] + outs[0][6:], other[:2] + other[6:], strict=True):
            fixed &= (x == y).reshape(64, -1).all(-1)
    assert int(fixed.sum()) >= 32  # 40 of 64 at the time of writing


def test_absorbed_values_far_past_the_scaling_range():
    """float32, (max C - min C) / eps ~ 90 with a zero-mass entry and an infinite cost: most
    problems leave the scalings' range; the values of their blocks, computed entry by entry
    from the potentials, are finite and those of the float64 log domain (the factored form
    overflowed to NaN here)."""
    gen = torch.Generator().manual_seed(40)
    a = torch.randn(40, 5, generator=gen).softmax(-1)
    b = torch.randn(40, 5, generator=gen).softmax(-1)
    a[::3, 0] = 0
    a = a / a.sum(-1, keepdim=True)
    C = torch.rand(5, 5, generator=gen)
    C[1, 2] = float("inf")
    out = block.solve(a, b, C[None].contiguous(), 0.01, 100, 1e-6, True)
    ref = sinkhorn(a.double(), b.double(), C.double(), 0.01, max_iter=100, tol=1e-6,
                   method="log")
    assert int(out[4].sum()) >= 20
    for got, want in ((out[6], ref.transport_cost), (out[7], ref.objective)):
        assert bool(torch.isfinite(got).all())
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_fixed_point_stop_with_absorption(monkeypatch):
    """Problems absorbed into the log domain and ones stopped at a fixed point, in one call:
    the same outputs with and without the stop."""
    a, b, C = random_problem(20, 7, 6, seed=8)
    a[:5, :3] = 1e-4
    a = a / a.sum(-1, keepdim=True)
    monkeypatch.setitem(scaling.SAFE_RANGE, torch.float64, (1e-3, 1e4))
    args = (a, b, C[None].contiguous(), 0.05, 3000, 0.0, True)
    stop, full = block.solve(*args), block.solve(*args, fixed_stop=False)
    assert stop[4][:5].all() and not stop[4][5:].any()
    for x, y in zip(stop, full, strict=True):
        assert torch.equal(x, y)

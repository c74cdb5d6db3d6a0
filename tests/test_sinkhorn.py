"""pytransfer.ot.sinkhorn: every backend against the reference, the reference against POT,
gradients against finite differences and autograd, properties, padding, early exit."""

import numpy as np
import ot
import pytest
import torch
from conftest import random_problem
from hypothesis import given, settings
from hypothesis import strategies as st

from pytransfer.ot import _ops, sinkhorn

SHAPES = [(1, 1, 1), (2, 1, 5), (3, 6, 1), (2, 7, 13), (3, 13, 7), (1, 2, 2)]


@pytest.mark.parametrize("B,n,m", SHAPES)
@pytest.mark.parametrize("shared", [True, False])
def test_backend_matches_reference(backend, B, n, m, shared):
    a, b, C = random_problem(B, n, m, shared=shared, seed=n * m)
    ref = sinkhorn(a, b, C, 0.1, tol=1e-10, backend="reference")
    out = sinkhorn(a, b, C, 0.1, tol=1e-10, backend=backend)
    torch.testing.assert_close(out.f, ref.f, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out.g, ref.g, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out.transport_cost, ref.transport_cost, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(out.objective, ref.objective, rtol=1e-9, atol=1e-12)
    assert torch.equal(out.n_iter, ref.n_iter)
    assert bool(out.converged.all())
    torch.testing.assert_close(out.marginal_error, ref.marginal_error, rtol=1e-3, atol=1e-13)


def test_float32_matches_float64(backend):
    a, b, C = random_problem(4, 11, 5, seed=3)
    ref = sinkhorn(a, b, C, 0.02, tol=1e-9, backend="reference")
    out = sinkhorn(a.float(), b.float(), C.float(), 0.02, tol=1e-5, backend=backend)
    assert out.f.dtype == torch.float32
    assert torch.isfinite(out.f).all() and torch.isfinite(out.g).all()
    torch.testing.assert_close(out.transport_cost.double(), ref.transport_cost, rtol=1e-4, atol=0)


def test_non_contiguous_inputs(backend):
    a, b, C = random_problem(5, 6, 9, seed=1, shared=False)
    a_nc = a.t().contiguous().t()  # same values, column-major strides
    C_nc = C.transpose(1, 2).contiguous().transpose(1, 2)
    assert not a_nc.is_contiguous() and not C_nc.is_contiguous()
    ref = sinkhorn(a, b, C, 0.05, backend="reference")
    out = sinkhorn(a_nc, b[:, :], C_nc, 0.05, backend=backend)
    torch.testing.assert_close(out.transport_cost, ref.transport_cost, rtol=1e-9, atol=0)


@pytest.mark.parametrize("eps", [1e-2, 1e-1, 1.0, 10.0])
def test_reference_matches_pot(eps):
    a, b, C = random_problem(3, 8, 5, seed=7)
    out = sinkhorn(a, b, C, eps, tol=1e-12, max_iter=20000, return_plan=True, backend="reference")
    for k in range(3):
        an, bn, Cn = a[k].numpy(), b[k].numpy(), C.numpy()
        value = ot.sinkhorn2(an, bn, Cn, eps, method="sinkhorn_log", stopThr=1e-14,
                             numItermax=100000)
        plan = ot.sinkhorn(an, bn, Cn, eps, method="sinkhorn_log", stopThr=1e-14,
                           numItermax=100000)
        np.testing.assert_allclose(out.transport_cost[k].item(), value, rtol=1e-8)
        np.testing.assert_allclose(out.plan[k].numpy(), plan, rtol=1e-6, atol=1e-12)


def test_cpu_small_eps_matches_pot():
    """eps = 1e-3 of the cost scale in float64: the log domain does not underflow."""
    a, b, C = random_problem(2, 6, 5, seed=11)
    out = sinkhorn(a, b, C, 1e-3, tol=1e-11, max_iter=200000, return_plan=True, backend="cpu")
    assert bool(out.converged.all())
    for k in range(2):
        plan = ot.sinkhorn(a[k].numpy(), b[k].numpy(), C.numpy(), 1e-3, method="sinkhorn_log",
                           stopThr=1e-13, numItermax=200000)
        np.testing.assert_allclose(out.plan[k].numpy(), plan, atol=1e-9)


def test_float32_small_eps_no_nan(backend):
    a, b, C = random_problem(3, 9, 4, dtype=torch.float32, seed=2)
    out = sinkhorn(a, b, C, 1e-2, tol=1e-4, max_iter=3000, backend=backend, return_plan=True)
    for x in out[:6]:
        assert torch.isfinite(x.double()).all()
    torch.testing.assert_close(out.plan.sum(-1), a, atol=2e-4, rtol=0)


def test_zero_mass_padding_equals_unpadded(backend):
    a, b, C = random_problem(1, 5, 4, seed=5, shared=False)
    ap = torch.cat([a[:, :2], torch.zeros(1, 3, dtype=a.dtype), a[:, 2:]], 1)  # 3 padded rows
    bp = torch.cat([b, torch.zeros(1, 2, dtype=b.dtype)], 1)  # 2 padded columns
    Cp = torch.rand(1, 8, 6, dtype=C.dtype, generator=torch.Generator().manual_seed(0))
    Cp[:, [0, 1, 5, 6, 7], :4] = C
    ref = sinkhorn(a, b, C, 0.1, tol=1e-12, backend="reference", return_plan=True)
    out = sinkhorn(ap, bp, Cp, 0.1, tol=1e-12, backend=backend, return_plan=True)
    rows = [0, 1, 5, 6, 7]
    torch.testing.assert_close(out.transport_cost, ref.transport_cost, rtol=1e-10, atol=0)
    torch.testing.assert_close(out.objective, ref.objective, rtol=1e-10, atol=0)
    torch.testing.assert_close(out.plan[:, rows, :4], ref.plan, rtol=1e-9, atol=1e-14)
    assert out.plan[:, [2, 3, 4], :].abs().max() == 0 and out.plan[:, :, 4:].abs().max() == 0
    assert torch.isfinite(out.f).all() and torch.isfinite(out.g).all()
    # Extended potentials are the c-transforms: f_i = -eps LSE_j((g_j - C_ij)/eps).
    ct = -0.1 * torch.logsumexp((out.g[:, None, :4] - Cp[:, :, :4]) / 0.1, -1)
    torch.testing.assert_close(out.f[:, [2, 3, 4]], ct[:, [2, 3, 4]], rtol=1e-9, atol=1e-12)


def test_early_exit_per_problem(backend):
    a, b, C = random_problem(4, 7, 6, seed=9, shared=False)
    C = C * torch.tensor([0.01, 1.0, 0.02, 3.0], dtype=C.dtype)[:, None, None]  # easy, hard...
    out = sinkhorn(a, b, C, 0.05, tol=1e-9, max_iter=5000, backend=backend)
    assert out.n_iter[0] < out.n_iter[1] and out.n_iter[2] < out.n_iter[3]
    for k in range(4):  # each problem's result is what it gets alone: no extra iterations
        alone = sinkhorn(a[k], b[k], C[k], 0.05, tol=1e-9, max_iter=5000, backend=backend)
        assert alone.n_iter == out.n_iter[k]
        torch.testing.assert_close(alone.f, out.f[k], rtol=0, atol=1e-12)


def test_tol_zero_runs_max_iter(backend):
    a, b, C = random_problem(3, 1, 1, seed=0)  # converges exactly at once
    out = sinkhorn(a, b, C, 0.1, tol=0.0, max_iter=17, backend=backend)
    assert out.n_iter.tolist() == [17, 17, 17]


def test_single_problem_drops_batch():
    a, b, C = random_problem(1, 4, 3)
    out = sinkhorn(a[0], b[0], C, 0.1, return_plan=True)
    assert out.transport_cost.shape == () and out.f.shape == (4,) and out.plan.shape == (4, 3)


def test_unbalanced_total_mass_one_is_not_required():
    a, b, C = random_problem(2, 4, 3)
    one = sinkhorn(a, b, C, 0.1, tol=1e-12)
    three = sinkhorn(3 * a, 3 * b, C, 0.1, tol=1e-12)
    torch.testing.assert_close(three.transport_cost, 3 * one.transport_cost, rtol=1e-9, atol=0)


# ---------------------------------------------------------------- gradients
def _zero_sum(x):
    return x - x.mean(-1, keepdim=True)


def _value_fn(a0, b0, which, grad, backend, tol, max_iter=100000):
    def fn(da, db, C):
        res = sinkhorn(a0 + _zero_sum(da), b0 + _zero_sum(db), C, 0.2, tol=tol,
                       max_iter=max_iter, grad=grad, backend=backend)
        return getattr(res, which)
    return fn


@pytest.mark.parametrize("which", ["transport_cost", "objective"])
@pytest.mark.parametrize("shared", [True, False])
def test_gradcheck_implicit(which, shared):
    a, b, C = random_problem(2, 5, 3, shared=shared, seed=4)
    da = torch.zeros_like(a, requires_grad=True)
    db = torch.zeros_like(b, requires_grad=True)
    C.requires_grad_(True)
    fn = _value_fn(a, b, which, "implicit", "cpu", tol=1e-15)
    assert torch.autograd.gradcheck(fn, (da, db, C), eps=1e-6, atol=1e-7, rtol=1e-4)


def test_gradcheck_implicit_wide_problem():
    """n < m exercises the Schur complement on the other side."""
    a, b, C = random_problem(1, 2, 6, shared=False, seed=8)
    args = (torch.zeros_like(a, requires_grad=True), torch.zeros_like(b, requires_grad=True),
            C.requires_grad_(True))
    fn = _value_fn(a, b, "transport_cost", "implicit", "cpu", tol=1e-15)
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-7, rtol=1e-4)


def test_gradcheck_dual_objective_is_exact():
    """For the objective, the dual rule is the envelope gradient: exact at convergence."""
    a, b, C = random_problem(2, 4, 3, shared=False, seed=6)
    args = (torch.zeros_like(a, requires_grad=True), torch.zeros_like(b, requires_grad=True),
            C.requires_grad_(True))
    fn = _value_fn(a, b, "objective", "dual", "cpu", tol=1e-15)
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-7, rtol=1e-4)


@pytest.mark.parametrize("which", ["transport_cost", "objective"])
def test_gradcheck_unrolled(which):
    a, b, C = random_problem(2, 4, 3, seed=2)
    args = (torch.zeros_like(a, requires_grad=True), torch.zeros_like(b, requires_grad=True),
            C.requires_grad_(True))
    fn = _value_fn(a, b, which, "unrolled", "reference", tol=0.0, max_iter=30)
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-8, rtol=1e-6)


def test_implicit_matches_unrolled_at_convergence():
    a, b, C = random_problem(3, 6, 4, seed=12, shared=False)
    grads = {}
    for grad, backend in (("implicit", "cpu"), ("unrolled", "reference")):
        x = [t.clone().requires_grad_(True) for t in (a, b, C)]
        res = sinkhorn(*x, 0.3, tol=0.0, max_iter=3000, grad=grad, backend=backend)
        res.transport_cost.sum().backward()
        grads[grad] = [_zero_sum(x[0].grad), _zero_sum(x[1].grad), x[2].grad]
    for gi, gu in zip(grads["implicit"], grads["unrolled"]):
        torch.testing.assert_close(gi, gu, rtol=1e-8, atol=1e-10)


def test_implicit_zero_mass_entries_match_limit():
    """The adjoint of zero-mass entries is the a_i -> 0 limit (finite differences from 0+)."""
    a, b, C = random_problem(1, 4, 3, shared=False, seed=13)
    a = torch.cat([a, torch.zeros(1, 1, dtype=a.dtype)], 1)
    C = torch.cat([C, torch.rand(1, 1, 3, dtype=C.dtype)], 1)
    x = a.clone().requires_grad_(True)
    sinkhorn(x, b, C, 0.2, tol=1e-15, grad="implicit").transport_cost.sum().backward()
    h = 1e-7
    direction = torch.tensor([[-0.25, -0.25, -0.25, -0.25, 1.0]], dtype=a.dtype)
    vp = sinkhorn(a + h * direction, b, C, 0.2, tol=1e-15).transport_cost
    v0 = sinkhorn(a, b, C, 0.2, tol=1e-15).transport_cost
    fd = (vp - v0) / h
    torch.testing.assert_close((x.grad * direction).sum(-1), fd, rtol=1e-4, atol=1e-7)
    assert torch.isfinite(x.grad).all()


def test_dual_gradient_is_jtln_formula():
    a, b, C = random_problem(3, 5, 4, seed=3)
    x = [t.clone().requires_grad_(True) for t in (a, b, C)]
    res = sinkhorn(*x, 0.1, tol=1e-12, grad="dual", return_plan=True)
    (res.transport_cost * torch.tensor([1.0, 2.0, 3.0], dtype=a.dtype)).sum().backward()
    w = torch.tensor([1.0, 2.0, 3.0], dtype=a.dtype)[:, None]
    torch.testing.assert_close(x[0].grad, w * _zero_sum(res.f))
    torch.testing.assert_close(x[1].grad, w * _zero_sum(res.g))
    torch.testing.assert_close(x[2].grad, (w[:, :, None] * res.plan).sum(0))


def test_dual_differs_from_true_gradient_on_jtln_sized_problems():
    """Why grad='implicit' exists: the dual rule is not the gradient of <plan, C>."""
    a, b, C = random_problem(8, 10, 10, seed=1)
    grads = []
    for grad in ("dual", "implicit"):
        x = a.clone().requires_grad_(True)
        sinkhorn(x, b, C, 0.1, tol=1e-12, grad=grad).transport_cost.sum().backward()
        grads.append(x.grad)
    rel = (grads[0] - grads[1]).norm(dim=-1) / grads[1].norm(dim=-1)
    assert bool((rel > 0.05).all())


# ---------------------------------------------------------------- properties
problems = st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 3),
                     st.integers(0, 2**16), st.sampled_from([0.05, 0.2, 1.0]))


@settings(max_examples=25, deadline=None)
@given(problems)
def test_property_marginals(p):
    n, m, B, seed, eps = p
    a, b, C = random_problem(B, n, m, seed=seed)
    out = sinkhorn(a, b, C, eps, tol=1e-10, max_iter=20000, return_plan=True, backend="cpu")
    torch.testing.assert_close(out.plan.sum(-1), a, atol=1e-9, rtol=0)
    torch.testing.assert_close(out.plan.sum(-2), b, atol=1e-12, rtol=0)
    assert bool((out.plan >= 0).all())


@settings(max_examples=25, deadline=None)
@given(problems)
def test_property_symmetry(p):
    n, m, B, seed, eps = p
    a, b, C = random_problem(B, n, m, seed=seed)
    fw = sinkhorn(a, b, C, eps, tol=1e-12, max_iter=20000, backend="cpu")
    bw = sinkhorn(b, a, C.T, eps, tol=1e-12, max_iter=20000, backend="cpu")
    torch.testing.assert_close(fw.transport_cost, bw.transport_cost, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(fw.objective, bw.objective, rtol=1e-8, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(problems)
def test_property_translation_invariance(p):
    n, m, B, seed, eps = p
    a, b, C = random_problem(B, n, m, seed=seed, shared=False)
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(B, n, 1, generator=gen, dtype=C.dtype)
    v = torch.randn(B, 1, m, generator=gen, dtype=C.dtype)
    base = sinkhorn(a, b, C, eps, tol=1e-12, max_iter=20000, return_plan=True, backend="cpu")
    moved = sinkhorn(a, b, C + u + v, eps, tol=1e-12, max_iter=20000, return_plan=True,
                     backend="cpu")
    torch.testing.assert_close(moved.plan, base.plan, rtol=1e-7, atol=1e-12)
    shift = (a * u[..., 0]).sum(-1) + (b * v[:, 0]).sum(-1)
    torch.testing.assert_close(moved.objective, base.objective + shift, rtol=1e-8, atol=1e-10)


# ---------------------------------------------------------------- torch.library
def _solver_args(B=2, n=3, m=4, dtype=torch.float64):
    a, b, C = random_problem(B, n, m, dtype=dtype)
    return a, b, C[None], 0.1, 50, 1e-6


@pytest.mark.parametrize("op", [_ops.sinkhorn_log_cpu, _ops.sinkhorn_log_triton])
def test_opcheck_solvers(op):
    torch.library.opcheck(op, _solver_args())
    torch.library.opcheck(op, _solver_args(dtype=torch.float32))


@pytest.mark.parametrize("mode", ["dual", "implicit"])
@pytest.mark.parametrize("shared,factorized,return_plan",
                         [(True, True, False), (True, True, True), (True, False, True),
                          (False, False, True)])
def test_opcheck_values(mode, shared, factorized, return_plan):
    a, b, C = random_problem(2, 4, 3, shared=shared)
    C = C[None] if shared else C
    f, g, _, _ = _ops.sinkhorn_log_cpu(a, b, C, 0.1, 200, 1e-12)
    args = (a.requires_grad_(), b.requires_grad_(), C.requires_grad_(), f, g, 0.1, mode,
            factorized, return_plan)
    torch.library.opcheck(_ops.sinkhorn_values, args)


def test_factorized_values_equal_plan_values():
    a, b, C = random_problem(3, 7, 5, seed=4)
    a[0, 2] = 0  # zero-mass entries
    a = a / a.sum(-1, keepdim=True)
    f, g, _, _ = _ops.sinkhorn_log_cpu(a, b, C[None], 0.02, 5000, 1e-12)
    from pytransfer.ot.reference import plan_from_potentials, values_factorized, values_from_plan

    plan = plan_from_potentials(a, b, C[None], f, g, 0.02)
    for x, y in zip(values_factorized(a, b, C[None], f, g, 0.02),
                    values_from_plan(a, b, C[None], plan, f, g, 0.02)):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("n,m", [(4, 3), (2, 5)])
def test_opcheck_adjoint(n, m):
    from pytransfer.ot.implicit import sinkhorn_adjoint

    a, b, C = random_problem(2, n, m)
    a[0, 1] = 0  # exercise the zero-mass branch
    a = a / a.sum(-1, keepdim=True)
    res = sinkhorn(a, b, C, 0.1, tol=1e-12, return_plan=True)
    torch.library.opcheck(sinkhorn_adjoint, (a, b, C[None], res.f, res.g, res.plan, 0.1))


def test_torch_compile_fullgraph():
    a, b, C = random_problem(3, 5, 4, dtype=torch.float32)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def loss(a, b, C):
        return sinkhorn(a, b, C, 0.1, backend="cpu", check_inputs=False).transport_cost.sum()

    eager = sinkhorn(a, b, C, 0.1, backend="cpu").transport_cost.sum()
    torch.testing.assert_close(loss(a, b, C), eager)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_upcast(dtype):
    a, b, C = random_problem(3, 6, 4, dtype=torch.float32, seed=5)
    ref = sinkhorn(a.to(dtype).float(), b.to(dtype).float(), C.to(dtype).float(), 0.1,
                   check_inputs=False)
    out = sinkhorn(a.to(dtype), b.to(dtype), C.to(dtype), 0.1)  # mass gap of rounding allowed
    assert out.f.dtype == torch.float32
    torch.testing.assert_close(out.transport_cost, ref.transport_cost)


def test_spd_solve_falls_back_to_lu_for_non_pd_systems():
    from pytransfer.ot.implicit import _solve_spd

    gen = torch.Generator().manual_seed(0)
    M = torch.randn(3, 4, 4, generator=gen, dtype=torch.float64)
    S = M @ M.transpose(-1, -2) + torch.eye(4, dtype=torch.float64)
    S[1] = M[1] + M[1].T  # symmetric, indefinite: Cholesky fails for this one
    rhs = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(_solve_spd(S, rhs), torch.linalg.solve(S, rhs))

"""What POT's own Sinkhorn tests expect (issue 15): warm starts, forbidden pairs (+inf cost),
a differentiable plan on every backend, and which marginal is exact after a truncated run."""

import ot
import pytest
import torch
from conftest import random_problem

from pytransfer.ot import sinkhorn

INF = float("inf")
METHODS = ["log", "scaling"]


def _zero_sum(x):
    return x - x.mean(-1, keepdim=True)


# ---------------------------------------------------------------- warm start
@pytest.mark.parametrize("method", METHODS)
def test_warm_start_from_the_solution_converges_at_once(backend, method):
    a, b, C = random_problem(3, 7, 5, seed=1)
    cold = sinkhorn(a, b, C, 0.1, tol=1e-10, method=method, backend=backend)
    assert bool((cold.n_iter > 10).all())
    warm = sinkhorn(a, b, C, 0.1, tol=1e-10, method=method, backend=backend,
                    init=(cold.f, cold.g))
    assert bool((warm.n_iter <= 2).all()) and bool(warm.converged.all())
    torch.testing.assert_close(warm.f, cold.f, rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(warm.g, cold.g, rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(warm.transport_cost, cold.transport_cost, rtol=1e-9, atol=0)


@pytest.mark.parametrize("method", METHODS)
def test_warm_start_from_a_perturbed_solution_equals_a_cold_solve(backend, method):
    a, b, C = random_problem(2, 6, 9, seed=2, shared=method == "scaling")
    cold = sinkhorn(a, b, C, 0.2, tol=1e-12, method=method, backend=backend, return_plan=True)
    gen = torch.Generator().manual_seed(0)
    g0 = cold.g + 0.3 * torch.randn(cold.g.shape, generator=gen, dtype=cold.g.dtype) + 5.0
    warm = sinkhorn(a, b, C, 0.2, tol=1e-12, method=method, backend=backend, return_plan=True,
                    init=(cold.f, g0))
    torch.testing.assert_close(warm.plan, cold.plan, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(warm.objective, cold.objective, rtol=1e-10, atol=0)


def test_scaling_warm_start_out_of_range_starts_in_the_log_domain(backend):
    """Problem 1's v = exp(g/eps) is shifted far outside the scalings' range (a gauge shift:
    the same plan): it starts in the log domain, problem 0 in the scaling form."""
    a, b, C = random_problem(2, 5, 6, seed=4)
    cold = sinkhorn(a, b, C, 0.1, tol=1e-11, method="scaling", backend=backend,
                    return_plan=True)
    shift = torch.tensor([[0.0], [300 * 0.1]], dtype=a.dtype)  # e^300 > 1e80
    warm = sinkhorn(a, b, C, 0.1, tol=1e-11, method="scaling", backend=backend,
                    return_plan=True, init=(cold.f - shift, cold.g + shift))
    assert bool((warm.n_iter <= 2).all())
    torch.testing.assert_close(warm.plan, cold.plan, rtol=1e-8, atol=1e-13)
    torch.testing.assert_close(warm.g, cold.g + shift, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("name", ["sinkhorn_scaling_cpu", "sinkhorn_scaling_triton"])
def test_opcheck_scaling_solvers_with_warm_start(name):
    from pytransfer.ot import _ops

    a, b, C = random_problem(3, 3, 4)
    g0 = 0.1 * torch.randn(3, 4, generator=torch.Generator().manual_seed(3), dtype=a.dtype)
    g0[2] += 300.0 * 0.1  # one problem starts in the log domain
    torch.library.opcheck(getattr(_ops, name), (a, b, C[None], 0.1, 50, 1e-6, g0))


def test_unbatched_warm_start_is_shared_and_matches_pot_warmstart():
    a, b, C = random_problem(2, 5, 4, seed=3)
    cold = sinkhorn(a, b, C, 0.1, tol=1e-12)
    warm = sinkhorn(a, b, C, 0.1, tol=1e-12, init=(cold.f[0], cold.g[0]))
    assert int(warm.n_iter[0]) <= 2 < int(warm.n_iter[1])
    torch.testing.assert_close(warm.transport_cost, cold.transport_cost, rtol=1e-10, atol=0)
    # POT's warmstart is (f, g) / eps; at convergence both give the same plan
    plan = ot.sinkhorn(a[1].numpy(), b[1].numpy(), C.numpy(), 0.1, method="sinkhorn_log",
                       stopThr=1e-14, numItermax=10000,
                       warmstart=(cold.f[0].numpy() / 0.1, cold.g[0].numpy() / 0.1))
    ours = sinkhorn(a[1], b[1], C, 0.1, tol=1e-13, init=(cold.f[0], cold.g[0]), return_plan=True)
    torch.testing.assert_close(ours.plan, torch.from_numpy(plan), rtol=1e-8, atol=1e-13)


# ---------------------------------------------------------------- forbidden pairs
def _forbidden_problem(shared=True):
    a, b, C = random_problem(2, 6, 5, seed=5, shared=shared)
    C = C.clone()
    C[..., 0, 1] = INF
    C[..., 3, :3] = INF
    C[..., 4, 4] = INF
    return a, b, C


@pytest.mark.parametrize("method", METHODS)
def test_forbidden_pairs_match_pot(backend, method):
    a, b, C = _forbidden_problem()
    out = sinkhorn(a, b, C, 0.1, tol=1e-12, method=method, backend=backend, return_plan=True)
    assert bool(out.converged.all())
    assert bool((out.plan[:, torch.isinf(C)] == 0).all())
    fused = sinkhorn(a, b, C, 0.1, tol=1e-12, method=method, backend=backend)  # values in-kernel
    torch.testing.assert_close(fused.transport_cost, out.transport_cost, rtol=1e-10, atol=0)
    torch.testing.assert_close(fused.objective, out.objective, rtol=1e-10, atol=0)
    finite = torch.where(torch.isinf(C), 0, C)
    for k in range(2):
        plan = ot.sinkhorn(a[k].numpy(), b[k].numpy(), C.numpy(), 0.1, method="sinkhorn_log",
                           stopThr=1e-14, numItermax=100000)
        torch.testing.assert_close(out.plan[k], torch.from_numpy(plan), rtol=1e-8, atol=1e-13)
        torch.testing.assert_close(out.transport_cost[k], (out.plan[k] * finite).sum(),
                                   rtol=1e-12, atol=0)
    assert torch.isfinite(out.objective).all() and torch.isfinite(out.f).all()


def test_forbidden_pairs_single_problem():
    a, b, C = _forbidden_problem()
    one = sinkhorn(a[1], b[1], C, 0.1, tol=1e-12, return_plan=True)
    both = sinkhorn(a, b, C, 0.1, tol=1e-12, return_plan=True)
    torch.testing.assert_close(one.plan, both.plan[1], rtol=1e-12, atol=0)
    torch.testing.assert_close(one.transport_cost, both.transport_cost[1], rtol=1e-12, atol=0)


def test_block_separable_problem_equals_its_reduced_problems(backend):
    """Rows 0-2 may go only to columns 0-1 and rows 3-4 only to columns 2-4: with equal block
    masses the solution is the two sub-problems' solutions side by side."""
    a, b, C = random_problem(1, 5, 5, seed=9)
    a = torch.cat([a[:, :3] / a[:, :3].sum() * 0.4, a[:, 3:] / a[:, 3:].sum() * 0.6], 1)
    b = torch.cat([b[:, :2] / b[:, :2].sum() * 0.4, b[:, 2:] / b[:, 2:].sum() * 0.6], 1)
    Cf = C.clone()
    Cf[:3, 2:] = INF
    Cf[3:, :2] = INF
    out = sinkhorn(a, b, Cf, 0.05, tol=1e-12, backend=backend, return_plan=True)
    top = sinkhorn(a[:, :3], b[:, :2], C[:3, :2], 0.05, tol=1e-12, backend="reference",
                   return_plan=True)
    bottom = sinkhorn(a[:, 3:], b[:, 2:], C[3:, 2:], 0.05, tol=1e-12, backend="reference",
                      return_plan=True)
    torch.testing.assert_close(out.plan[:, :3, :2], top.plan, rtol=1e-8, atol=1e-14)
    torch.testing.assert_close(out.plan[:, 3:, 2:], bottom.plan, rtol=1e-8, atol=1e-14)
    torch.testing.assert_close(out.transport_cost, top.transport_cost + bottom.transport_cost,
                               rtol=1e-9, atol=0)
    # the generalised KL's eps |a| |b| term: 1 * 1 here, 0.4^2 + 0.6^2 in the sub-problems
    torch.testing.assert_close(out.objective,
                               top.objective + bottom.objective + 0.05 * (1 - 0.4**2 - 0.6**2),
                               rtol=1e-9, atol=0)


@pytest.mark.parametrize("grad", ["dual", "implicit"])
@pytest.mark.parametrize("method", METHODS)
def test_forbidden_pairs_gradients_are_finite_and_exact(grad, method):
    a, b, C = _forbidden_problem()
    args = (torch.zeros_like(a, requires_grad=True), torch.zeros_like(b, requires_grad=True),
            C.clone().requires_grad_(True))

    def fn(da, db, C):
        out = sinkhorn(a + _zero_sum(da), b + _zero_sum(db), C, 0.2, tol=1e-15, grad=grad,
                       method=method, backend="cpu")
        return out.objective if grad == "dual" else out.transport_cost

    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-7, rtol=1e-4)
    fn(*args).sum().backward()
    assert bool((args[2].grad[torch.isinf(C)] == 0).all())


def test_gradcheck_plan_with_forbidden_pairs():
    a, b, C = _forbidden_problem()
    args = (torch.zeros_like(a, requires_grad=True), torch.zeros_like(b, requires_grad=True),
            C.clone().requires_grad_(True))

    def fn(da, db, C):
        return sinkhorn(a + _zero_sum(da), b + _zero_sum(db), C, 0.2, tol=1e-15,
                        return_plan=True, backend="cpu").plan

    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-7, rtol=1e-4)


def test_forbidden_pairs_unrolled_gradient_is_finite():
    a, b, C = _forbidden_problem(shared=False)
    C.requires_grad_(True)
    out = sinkhorn(a, b, C, 0.2, tol=1e-12, grad="unrolled", backend="reference")
    out.transport_cost.sum().backward()
    assert torch.isfinite(C.grad).all() and bool((C.grad[torch.isinf(C)] == 0).all())


# ---------------------------------------------------------------- differentiable plan
@pytest.mark.parametrize("backend_method", [("reference", "log"), ("cpu", "log"),
                                            ("cpu", "scaling")])
@pytest.mark.parametrize("grad", ["dual", "implicit"])
def test_gradcheck_plan(backend_method, grad):
    backend, method = backend_method
    a, b, C = random_problem(2, 4, 3, seed=4)
    a[1, 2] = 0.0  # a zero-mass row: its plan row is 0, its a-gradient the limit a_i -> 0
    a = a / a.sum(-1, keepdim=True)
    support = (a > 0).to(a.dtype)
    args = (torch.zeros_like(a, requires_grad=True), torch.zeros_like(b, requires_grad=True),
            C.clone().requires_grad_(True))

    def fn(da, db, C):
        d = da * support
        d = d - support * d.sum(-1, keepdim=True) / support.sum(-1, keepdim=True)
        return sinkhorn(a + d, b + _zero_sum(db), C, 0.2, tol=1e-15,
                        max_iter=100000, grad=grad, method=method, backend=backend,
                        return_plan=True).plan

    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-7, rtol=1e-4)


def test_plan_gradient_matches_unrolled_at_convergence():
    a, b, C = random_problem(2, 5, 4, seed=6, shared=False)
    W = torch.randn(C.shape, generator=torch.Generator().manual_seed(1), dtype=C.dtype)
    grads = {}
    for grad, backend in (("unrolled", "reference"), ("implicit", "cpu"), ("dual", "cpu")):
        da = torch.zeros_like(a, requires_grad=True)
        db = torch.zeros_like(b, requires_grad=True)
        Cg = C.clone().requires_grad_(True)
        out = sinkhorn(a + _zero_sum(da), b + _zero_sum(db), Cg, 0.1, tol=1e-14, max_iter=5000,
                       grad=grad, backend=backend, return_plan=True)
        (out.plan * W).sum().backward()
        grads[grad] = (da.grad, db.grad, Cg.grad)
    for grad in ("implicit", "dual"):
        for x, y in zip(grads[grad], grads["unrolled"]):
            torch.testing.assert_close(x, y, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_triton_plan_gradient_matches_cpu(method):
    """The rule is shared Python; Triton (interpreter) supplies the potentials it starts from
    (gradcheck through the interpreter takes too long for CI)."""
    a, b, C = random_problem(2, 4, 3, seed=4)
    W = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(2), dtype=C.dtype)
    grads = []
    for backend in ("cpu", "triton"):
        args = [x.clone().requires_grad_(True) for x in (a, b, C)]
        out = sinkhorn(*args, 0.2, tol=1e-14, method=method, backend=backend, return_plan=True)
        (out.plan * W).sum().backward()
        grads.append([x.grad for x in args])
    for x, y in zip(*grads):
        assert torch.isfinite(x).all() and float(x.abs().max()) > 1e-3
        torch.testing.assert_close(y, x, rtol=1e-8, atol=1e-10)


def test_plan_and_value_gradients_add_up():
    a, b, C = random_problem(2, 4, 5, seed=8)
    C.requires_grad_(True)
    out = sinkhorn(a, b, C, 0.1, tol=1e-14, grad="implicit", return_plan=True)
    (g_both,) = torch.autograd.grad(out.transport_cost.sum() + out.plan.sum(), C)
    out = sinkhorn(a, b, C, 0.1, tol=1e-14, grad="implicit", return_plan=True)
    (g_value,) = torch.autograd.grad(out.transport_cost.sum(), C)
    # sum(plan) = mass is constant, so the plan's own contribution vanishes
    torch.testing.assert_close(g_both, g_value, rtol=1e-8, atol=1e-10)


def test_opcheck_adjoint_with_weight():
    from pytransfer.ot.implicit import sinkhorn_adjoint

    a, b, C = random_problem(2, 4, 3)
    a[0, 1] = 0
    a = a / a.sum(-1, keepdim=True)
    res = sinkhorn(a, b, C, 0.1, tol=1e-12, return_plan=True)
    W = torch.randn(2, 4, 3, dtype=C.dtype)
    torch.library.opcheck(sinkhorn_adjoint,
                          (a, b, C[None], res.f, res.g, res.plan.detach(), 0.1, W))


# ---------------------------------------------------------------- truncated runs
@pytest.mark.filterwarnings("ignore:Sinkhorn did not converge")
@pytest.mark.parametrize("k", [1, 3])
def test_truncated_run_columns_exact_and_transpose_of_pot(backend, k):
    """Documented convention: f then g per iteration, so after k iterations the columns are
    exact; POT updates v then u (rows exact), so its plan on (b, a, C^T) is our plan's
    transpose."""
    a, b, C = random_problem(1, 6, 4, seed=11)
    out = sinkhorn(a, b, C, 0.05, tol=0.0, max_iter=k, backend=backend, return_plan=True)
    assert int(out.n_iter[0]) == k
    torch.testing.assert_close(out.plan[0].sum(0), b[0], rtol=1e-12, atol=1e-15)
    assert float((out.plan[0].sum(1) - a[0]).abs().sum()) > 1e-4  # rows not yet exact
    torch.testing.assert_close(out.marginal_error[0], (out.plan[0].sum(1) - a[0]).abs().sum(),
                               rtol=1e-9, atol=0)
    pot = ot.sinkhorn(b[0].numpy(), a[0].numpy(), C.T.numpy(), 0.05, numItermax=k, stopThr=0.0)
    torch.testing.assert_close(out.plan[0], torch.from_numpy(pot).T, rtol=1e-9, atol=1e-15)
    pot_rows = ot.sinkhorn(a[0].numpy(), b[0].numpy(), C.numpy(), 0.05, numItermax=k,
                           stopThr=0.0)
    torch.testing.assert_close(torch.from_numpy(pot_rows).sum(1), a[0], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", ["sinkhorn_log_cpu", "sinkhorn_log_triton"])
def test_opcheck_solvers_with_warm_start(name):
    from pytransfer.ot import _ops

    a, b, C = random_problem(2, 3, 4)
    g0 = torch.randn(2, 4, generator=torch.Generator().manual_seed(3), dtype=a.dtype)
    torch.library.opcheck(getattr(_ops, name), (a, b, C[None], 0.1, 50, 1e-6, g0))


def test_fused_dual_op_with_warm_start():
    from pytransfer.ot import block

    a, b, C = random_problem(3, 5, 4)
    cold = block.sinkhorn_dual(a, b, C[None], 0.1, 1000, 1e-10)
    g0 = cold[3].clone()
    g0[2] += 300.0 * 0.1  # out of the scalings' range: that problem starts in the log domain
    warm = block.sinkhorn_dual(a, b, C[None], 0.1, 1000, 1e-10, g0)
    assert bool((warm[4] <= 2).all()) and bool((cold[4] > 10).all())
    torch.testing.assert_close(warm[0], cold[0], rtol=1e-9, atol=0)
    a.requires_grad_(True)
    torch.library.opcheck(block.sinkhorn_dual_cpu, (a, b, C[None], 0.1, 100, 1e-8, g0))

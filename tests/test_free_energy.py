"""GibbsOperator (Lemma 5, eq. 17, 21): A.v against torch's Hessian of J and the brute-force
per-sample formula, b and C terms against finite differences, MINRES vs dense solves and CG,
bad input."""

import itertools

import pytest
import torch
from torch.func import functional_call, hessian, jacrev

from pytransfer.free_energy import FreeEnergyModel, GibbsOperator, conjugate_gradient, minres

DT = torch.float64


def tiny(prior="learnable", decoder="bernoulli", seed=0, X=3, classes=3):
    torch.manual_seed(seed)
    model = FreeEnergyModel(4, 3, 2, classes, prior=prior, decoder=decoder).to(DT)
    x = torch.rand(X, 4, dtype=DT)
    y = torch.randint(0, classes, (X,))
    return model, (x, y)


def _unflat(model, theta):
    out, i = {}, 0
    for name, p in model.named_parameters():
        out[name] = theta[i:i + p.numel()].view_as(p)
        i += p.numel()
    return out


def _H_of(op, lam, gamma):
    """theta -> H (X, S) on the operator's held samples."""
    def H(theta):
        params = _unflat(op.model, theta)
        log_m = _method(op.model, params, "log_prior", op.z)
        log_d = _method(op.model, params, "log_decoder", op.x, op.z)
        log_c = _method(op.model, params, "log_classifier", op.y, op.z)
        return (-log_m - lam * log_d - gamma * log_c).T
    return H


def _method(model, params, name, *args):
    """Call model.<name>(*args) with the parameters replaced by ``params``."""
    class Call(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, *a):
            return getattr(self.m, name)(*a)
    return functional_call(Call(), {f"m.{k}": v for k, v in params.items()}, args)


def _theta(model):
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach()


def brute_force_A(op, lam, gamma):
    """E_x[sum_s w grad^2 H - (sum_s w g g^T - gbar gbar^T)] with per-sample gradients/Hessians."""
    theta = _theta(op.model)
    H = _H_of(op, lam, gamma)
    g = jacrev(H)(theta)  # (X, S, P)
    Hs = hessian(H)(theta)  # (X, S, P, P)
    w = op.w
    gbar = torch.einsum("xs,xsp->xp", w, g)
    A = (torch.einsum("xs,xspq->xpq", w, Hs) - torch.einsum("xs,xsp,xsq->xpq", w, g, g)
         + torch.einsum("xp,xq->xpq", gbar, gbar))
    return torch.einsum("x,xpq->pq", op.pi, A), g


@pytest.mark.parametrize("weights", ["importance", "uniform"])
@pytest.mark.parametrize("prior,decoder", [("learnable", "bernoulli"), ("gaussian", "gaussian")])
def test_hvp_matches_brute_force(weights, prior, decoder):
    model, batch = tiny(prior, decoder)
    op = GibbsOperator(model, batch, 0.7, 1.9, samples=4, weights=weights)
    A, _ = brute_force_A(op, 0.7, 1.9)
    torch.testing.assert_close(A, A.T, rtol=0, atol=1e-12)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        v = torch.randn(op.numel, generator=gen, dtype=DT)
        torch.testing.assert_close(op.hvp(v), A @ v, rtol=1e-10, atol=1e-10)
    enc = [n.startswith("encoder") for n, p in model.named_parameters() for _ in range(p.numel())]
    enc = torch.tensor(enc)
    assert enc.any() and bool((A[enc] == 0).all())
    assert bool((op.hvp(torch.ones(op.numel, dtype=DT))[enc] == 0).all())


def test_hvp_matches_autograd_hessian_of_J():
    model, batch = tiny()
    op = GibbsOperator(model, batch, 1.3, 0.4, samples=6)
    H = _H_of(op, 1.3, 0.4)

    def J(th):
        return -torch.logsumexp(-H(th) - op.log_q, 1).mean()

    v = torch.randn(op.numel, dtype=DT)
    _, expect = torch.autograd.functional.hvp(J, _theta(model), v)
    torch.testing.assert_close(op.hvp(v), expect, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(op.grad_J(), torch.func.grad(J)(_theta(model)), rtol=1e-10,
                               atol=1e-12)


@pytest.mark.parametrize("weights", ["importance", "uniform"])
def test_b_terms_match_finite_differences(weights):
    model, batch = tiny(seed=2)
    lam, gamma, h = 0.8, 1.5, 1e-5
    op = GibbsOperator(model, batch, lam, gamma, samples=5, weights=weights)
    if weights == "importance":  # b = -d/d(lambda, gamma) grad J at fixed samples
        fd_l = -(op.grad_J(lam + h, gamma) - op.grad_J(lam - h, gamma)) / (2 * h)
        fd_g = -(op.grad_J(lam, gamma + h) - op.grad_J(lam, gamma - h)) / (2 * h)
    else:  # Remark 6: weights uniform at theta; the formula by brute force
        _, g = brute_force_A(op, lam, gamma)
        theta = _theta(model)
        def fd(dl, dg):
            gl = jacrev(_H_of(op, lam + dl, gamma + dg))(theta)
            return (gl - g) / (dl + dg)
        w = op.w
        def b(dgrad, field):
            c = field - (w * field).sum(1, keepdim=True)
            return -(op.pi[:, None] * (torch.einsum("xs,xsp->xp", w, dgrad)
                                       - torch.einsum("xs,xs,xsp->xp", w, c, g))).sum(0)
        fd_l = b(fd(h, 0.0), -op._terms["log_d"].detach())
        fd_g = b(fd(0.0, h), -op._terms["log_c"].detach())
    torch.testing.assert_close(op.b_lambda(), fd_l, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(op.b_gamma(), fd_g, rtol=1e-6, atol=1e-8)


def test_C_terms_match_finite_differences():
    model, batch = tiny(seed=3)
    lam, gamma, h = 0.9, 1.2, 1e-5
    op = GibbsOperator(model, batch, lam, gamma, samples=6)

    def C(l_, g_):
        return op.functionals(l_, g_).C

    assert op.dC_dlambda() == pytest.approx((C(lam + h, gamma) - C(lam - h, gamma)) / (2 * h),
                                            rel=1e-6)
    assert op.dC_dgamma() == pytest.approx((C(lam, gamma + h) - C(lam, gamma - h)) / (2 * h),
                                           rel=1e-6)
    H = _H_of(op, lam, gamma)
    theta = _theta(model)

    def C_theta(th):
        w = torch.softmax(-H(th) - op.log_q, 1)
        ell = _method(model, _unflat(model, th), "log_classifier", op.y, op.z).T
        return -(w * ell).sum(1).mean()
    torch.testing.assert_close(op.grad_C(), torch.func.grad(C_theta)(theta), rtol=1e-9,
                               atol=1e-12)
    # C_lambda = dC/dlambda + grad C . A^-1 b_lambda (eq. 21), with a dense solve
    A, _ = brute_force_A(op, lam, gamma)
    th_l = torch.linalg.lstsq(A, op.b_lambda()[:, None]).solution[:, 0]
    assert op.C_lambda(th_l) == pytest.approx(op.dC_dlambda() + float(op.grad_C() @ th_l))


def test_functionals_first_law():
    model, batch = tiny(seed=4)
    for weights in ("importance", "uniform"):
        op = GibbsOperator(model, batch, 0.5, 2.0, samples=8, weights=weights)
        f = op.functionals()
        assert f.F == pytest.approx(f.R + 0.5 * f.D + 2.0 * f.C, rel=1e-12)
    op = GibbsOperator(model, batch, 0.5, 2.0, samples=8, weights="uniform")
    with torch.no_grad():  # uniform: the encoder's C of eq. 4
        assert op.functionals().C == pytest.approx(
            float(-model.log_classifier(batch[1], op.z).mean()), rel=1e-12)


def test_minres_matches_dense_solve_on_indefinite_system():
    """Away from equilibrium A is indefinite: MINRES converges monotonically, CG does not."""
    model, batch = tiny(seed=5, X=4)
    op = GibbsOperator(model, batch, 1.0, 1.0, samples=6)
    A, _ = brute_force_A(op, 1.0, 1.0)
    active = A.abs().sum(1) > 0
    eig = torch.linalg.eigvalsh(A[active][:, active])
    assert eig.min() < -1e-6 < 1e-6 < eig.max()  # indefinite
    b = op.b_lambda()
    x, info = op.solve(b, maxiter=400, rtol=1e-10)
    assert info.converged and info.method == "minres"
    r = info.residual_norms
    assert all(r1 <= r0 * (1 + 1e-10) for r0, r1 in itertools.pairwise(r))
    torch.testing.assert_close(A @ x, b, rtol=0, atol=1e-8 * float(b.norm()))
    assert float((b - op.hvp(x)).norm()) == pytest.approx(r[-1], abs=1e-7 * float(b.norm()))
    # from x0 = 0 the iterates stay in range(A): the minimum-norm solution
    dense = torch.linalg.pinv(A, hermitian=True, rtol=1e-10) @ b
    torch.testing.assert_close(x, dense, rtol=0, atol=1e-6 * float(dense.norm()))
    _, cg = op.solve(b, method="cg", maxiter=400, rtol=1e-10)
    assert cg.negative_curvature  # CG meets negative curvature; its residual is not monotone
    assert any(r1 > r0 for r0, r1 in itertools.pairwise(cg.residual_norms))


def test_cg_breaks_down_where_minres_solves():
    """Symmetric indefinite A with b.Ab = 0: CG's first step meets zero curvature."""
    A = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=DT)
    b = torch.tensor([1.0, 0.0], dtype=DT)
    x, info = minres(lambda v: A @ v, b, maxiter=10, rtol=1e-12)
    assert info.converged
    torch.testing.assert_close(x, torch.tensor([0.0, 1.0], dtype=DT))
    _, cg = conjugate_gradient(lambda v: A @ v, b, maxiter=10, rtol=1e-12)
    assert cg.negative_curvature and not cg.converged


def test_damped_cg_on_positive_definite_shift():
    model, batch = tiny(seed=6)
    op = GibbsOperator(model, batch, 1.0, 1.0, samples=4)
    A, _ = brute_force_A(op, 1.0, 1.0)
    damping = float(-torch.linalg.eigvalsh(A).min()) + 0.5
    b = torch.randn(op.numel, dtype=DT)
    x, info = op.solve(b, method="cg", damping=damping, maxiter=500, rtol=1e-11)
    assert info.converged and not info.negative_curvature
    expect = torch.linalg.solve(A + damping * torch.eye(op.numel, dtype=DT), b)
    torch.testing.assert_close(x, expect, rtol=1e-7, atol=1e-8)


def test_minres_on_explicit_matrix():
    gen = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(30, 30, generator=gen, dtype=DT))
    A = Q @ torch.diag(torch.linspace(-3, 5, 30, dtype=DT)) @ Q.T
    b = torch.randn(30, generator=gen, dtype=DT)
    x, info = minres(lambda v: A @ v, b, maxiter=100, rtol=1e-12)
    assert info.converged and info.iterations <= 45  # 30 in exact arithmetic
    torch.testing.assert_close(x, torch.linalg.solve(A, b), rtol=1e-9, atol=1e-9)


class NoClassifier(torch.nn.Module):
    def encode(self, x): ...
    def log_prior(self, z): ...
    def log_decoder(self, x, z): ...


def test_bad_input():
    model, batch = tiny()
    with pytest.raises(TypeError, match="log_classifier"):
        GibbsOperator(NoClassifier(), batch, 1.0, 1.0)
    with pytest.raises(ValueError, match="samples must be >= 2"):
        GibbsOperator(model, batch, 1.0, 1.0, samples=1)
    GibbsOperator(model, batch, 1.0, 1.0, samples=1, weights="uniform")  # fine: Remark 6
    for name, lam, gamma in (("lam", 0.0, 1.0), ("gamma", 1.0, -2.0)):
        with pytest.raises(ValueError, match=f"{name} must be a finite number > 0"):
            GibbsOperator(model, batch, lam, gamma)
    with pytest.raises(ValueError, match="weights must be one of"):
        GibbsOperator(model, batch, 1.0, 1.0, weights="exact")
    bad_x = batch[0].clone()
    bad_x[0, 0] = float("inf")  # a Gaussian decoder's log d is then -inf
    gaussian = FreeEnergyModel(4, 3, 2, 3, decoder="gaussian").to(DT)
    with pytest.raises(ValueError, match=r"Hamiltonian H .* not finite"):
        GibbsOperator(gaussian, (bad_x, batch[1]), 1.0, 1.0)
    op = GibbsOperator(model, batch, 1.0, 1.0, samples=3)
    with pytest.raises(ValueError, match=rf"v must be a flat vector of shape \({op.numel},\)"):
        op.hvp(torch.zeros(op.numel + 1, dtype=DT))
    with pytest.raises(TypeError, match="v must have the parameters' dtype"):
        op.hvp(torch.zeros(op.numel))
    with pytest.raises(TypeError, match=r"v must be a torch\.Tensor"):
        op.hvp([0.0] * op.numel)
    with pytest.raises(ValueError, match="method must be one of"):
        op.solve(op.b_lambda(), method="gmres")


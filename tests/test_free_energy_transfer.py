"""Transfer with a changing data distribution (Lemma 9, eq. 23-30, 37-38): the OT coupling and
its sampled pairs (Appendix F), b_t and dC/dt against finite differences in t, the
constant-lambda (eq. 38) and geodesic (eq. 30) rules to first order, a seeded transfer."""

import pytest
import torch

from pytransfer.free_energy import FreeEnergyModel, GibbsOperator
from pytransfer.methods.free_energy import (
    ProcessConfig,
    equilibrate,
    mixture_batch,
    ot_batch,
    ot_coupling,
    ot_coupling_points,
    sample_pairs,
    transfer,
    transfer_rates,
)
from pytransfer.methods.free_energy.process import _b_t, _rates

DT = torch.float64


def _clouds(seed=0, ns=7, nt=5, d=4, classes=3):
    g = torch.Generator().manual_seed(seed)
    xs, xt = torch.rand(ns, d, generator=g, dtype=DT), torch.rand(nt, d, generator=g, dtype=DT)
    ys = torch.randint(0, classes, (ns,), generator=g)
    yt = torch.randint(0, classes, (nt,), generator=g)
    return (xs, ys), (xt, yt)


def test_ot_coupling_marginals_and_cost():
    (xs, _), (xt, _) = _clouds()
    plan = ot_coupling(xs, xt, eps=0.05)
    assert plan.shape == (7, 5) and bool((plan >= 0).all())
    torch.testing.assert_close(plan.sum(1), torch.full((7,), 1 / 7, dtype=DT), rtol=0, atol=1e-6)
    torch.testing.assert_close(plan.sum(0), torch.full((5,), 1 / 5, dtype=DT), rtol=0, atol=1e-6)
    cost = torch.cdist(xs, xt).pow(2)
    independent = torch.full((7, 5), 1 / 35, dtype=DT)
    assert float((plan * cost).sum()) < 0.8 * float((independent * cost).sum())


def test_point_cloud_coupling_is_the_dense_plan():
    """The potentials of ot_coupling_points give ot_coupling's plan (same cost scaling), and
    ot_batch draws from them: pair frequencies against the dense plan (chi-square)."""
    from pytransfer.ot import points_reference as ref

    (xs, ys), (xt, yt) = _clouds()
    dense = ot_coupling(xs, xt, eps=0.2)
    res = ot_coupling_points(xs, xt, eps=0.2)
    cost = ref.point_cost(xs[None], xt[None], 2)
    plan = ref.plan(cost, res.a[None], res.b[None], res.f[None], res.g[None],
                    float(res.eps_schedule[-1]))[0]
    torch.testing.assert_close(plan, dense, rtol=0, atol=1e-6)
    n = 20000
    path = ot_batch((xs, ys), (xt, yt), n, torch.Generator().manual_seed(5), plan=res, classes=3)
    i = torch.cdist(path.x0, xs).argmin(1)
    j = torch.cdist(path.x1, xt).argmin(1)
    counts = torch.bincount(i * 5 + j, minlength=35).double()
    expected = n * dense.flatten()
    keep = expected >= 5
    chi2 = float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())
    df = int(keep.sum()) - 1
    assert chi2 < df + 4 * (2 * df) ** 0.5, (chi2, df)


def test_sampled_pairs_follow_the_plan():
    (xs, _), (xt, _) = _clouds()
    plan = ot_coupling(xs, xt, eps=0.2)
    n = 20000
    i, j = sample_pairs(plan, n, torch.Generator().manual_seed(3))
    counts = torch.bincount(i * 5 + j, minlength=35).double()
    expected = n * plan.flatten()
    keep = expected >= 5
    chi2 = float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())
    df = int(keep.sum()) - 1
    assert chi2 < df + 4 * (2 * df) ** 0.5, (chi2, df)
    assert int(counts[~keep].sum()) <= 5 * int((~keep).sum()) + 5


def test_ot_batch_endpoints_and_linear_path():
    src, tgt = _clouds()
    plan = ot_coupling(src[0], tgt[0])
    path = ot_batch(src, tgt, 16, torch.Generator().manual_seed(4), plan=plan, classes=3)
    i, j = sample_pairs(plan, 16, torch.Generator().manual_seed(4))
    hot = torch.nn.functional.one_hot
    x0, y0, pi0 = path.at(0.0)
    x1, y1, pi1 = path.at(1.0)
    torch.testing.assert_close(x0, src[0][i], rtol=0, atol=0)
    torch.testing.assert_close(x1, tgt[0][j], rtol=0, atol=0)
    torch.testing.assert_close(y0, hot(src[1][i], 3).to(DT), rtol=0, atol=0)
    torch.testing.assert_close(y1, hot(tgt[1][j], 3).to(DT), rtol=0, atol=0)
    xq, yq, _ = path.at(0.25)
    torch.testing.assert_close(xq, 0.75 * src[0][i] + 0.25 * tgt[0][j])
    torch.testing.assert_close(yq.sum(1), torch.ones(16, dtype=DT))
    assert float(pi0.sum()) == pytest.approx(1.0) and torch.equal(pi0, pi1)


def _setup(interpolation, seed=0):
    src, tgt = _clouds(seed, ns=6, nt=6)
    torch.manual_seed(seed)
    model = FreeEnergyModel(4, 3, 2, 3, prior="learnable").to(DT)
    gen = torch.Generator().manual_seed(seed)
    if interpolation == "ot":
        path = ot_batch(src, tgt, 5, gen, plan=ot_coupling(src[0], tgt[0]), classes=3)
    else:
        path = mixture_batch(src, tgt, 10, gen)
    return model, path


def _op(model, path, t, lam, gamma):
    x, y, pi = path.at(t)
    torch.manual_seed(1)
    return GibbsOperator(model, (x, y), lam, gamma, samples=6, data_weights=pi.clamp_min(1e-12))


def _values(op, path, t, lam, gamma):
    """(grad J, R, D, C) on the operator's held samples with the data of the path at t."""
    x, y, pi = path.at(t)
    terms = op._evaluate(lam, gamma, x, y)
    logits = -terms["H"] - op.log_q
    w, pi = torch.softmax(logits, 1), pi / pi.sum()
    J = -(pi * torch.logsumexp(logits, 1)).sum()
    D = (pi * (w * -terms["log_d"]).sum(1)).sum().item()
    C = (pi * (w * -terms["log_c"]).sum(1)).sum().item()
    return op._grad_of(J).detach(), J.item() - lam * D - gamma * C, D, C


@pytest.mark.parametrize("interpolation", ["mixture", "ot"])
def test_b_t_and_dC_dt_match_finite_differences(interpolation):
    model, path = _setup(interpolation)
    t, lam, gamma, h = 0.4, 0.7, 1.3, 1e-5
    op = _op(model, path, t, lam, gamma)
    gp, _, _, Cp = _values(op, path, t + h, lam, gamma)
    gm, _, _, Cm = _values(op, path, t - h, lam, gamma)
    torch.testing.assert_close(_b_t(op, path, t), -(gp - gm) / (2 * h), rtol=1e-6, atol=1e-9)
    zero = {k: torch.zeros(op.numel, dtype=DT) for k in ("lam", "gamma", "t")}
    assert _rates(op, path, t, zero).C["t"] == pytest.approx((Cp - Cm) / (2 * h), rel=1e-6)


def _move(model, delta):
    vec = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    torch.nn.utils.vector_to_parameters(vec + delta, model.parameters())


@pytest.mark.parametrize("rule", ["constant-lambda", "geodesic"])
@pytest.mark.parametrize("interpolation", ["mixture", "ot"])
def test_transfer_rules_hold_to_first_order(rule, interpolation):
    model, path = _setup(interpolation)
    t, lam, gamma = 0.4, 0.7, 1.3
    op = _op(model, path, t, lam, gamma)
    cfg = ProcessConfig(lam_rate=0.5, minres_iters=400, minres_rtol=1e-12, slope=-2.0)
    s = transfer_rates(op, path, t, cfg, rule)
    if rule == "constant-lambda":
        assert s["lam_dot"] == 0.5
    _, R0, D0, C0 = _values(op, path, t, lam, gamma)

    def change(h):
        _move(model, h * s["theta_dot"])
        _, R, D, C = _values(op, path, t + h, lam + h * s["lam_dot"], gamma + h * s["gamma_dot"])
        _move(model, -h * s["theta_dot"])
        return R - R0, D - D0, C - C0

    (R3, D3, C3), (R4, D4, C4) = change(1e-3), change(1e-4)
    C_free = _values(op, path, t + 1e-3, lam, gamma)[3]  # theta, lambda, gamma held
    assert abs(C3) < 2e-2 * abs(C_free - C0)  # the data alone move C at first order
    assert abs(C3) / abs(C4) > 50, (C3, C4)  # C-dot = 0 (eq. 26): second order in h
    if rule == "geodesic":  # D-dot = k R-dot (eq. 30)
        g3, g4 = D3 - cfg.slope * R3, D4 - cfg.slope * R4
        assert abs(g3) / abs(g4) > 50 and abs(D3) > 50 * abs(g3), (g3, g4, D3)


def test_ot_transfer_keeps_C_on_a_near_target():
    """A seeded transfer to a slightly perturbed copy of the source: C within 10% throughout.
    Measured worst drifts over equilibration seeds 0-3: 2.8-9.2% (trainer batches), 1.7-6.6%
    (the former draws with replacement), mostly in the first Euler step; the old 5% bound held
    for its seed 0 only."""
    from pytransfer.data import digits_transfer

    d = digits_transfer(dtype=DT)
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(d.xs.shape[0], generator=g)[:200]
    src = (d.xs[idx], d.ys[idx])
    tgt = ((src[0] + 0.1 * torch.rand(src[0].shape, generator=g, dtype=DT)).clamp(0, 1), src[1])
    torch.manual_seed(0)
    model = FreeEnergyModel(64, 16, 3, 5).to(DT)
    equilibrate(model, src, 0.5, 2.0, steps=200, lr=1e-2, batch_size=100)
    cfg = ProcessConfig(steps=4, lam_rate=0.5, samples=8, batch_size=64, minres_iters=30,
                        damping=1e-3)
    recs = transfer(model, src, tgt, 0.5, 2.0, cfg, interpolation="ot")
    C0 = recs[0]["C"]
    assert [r["t"] for r in recs] == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])
    assert recs[-1]["lam"] == pytest.approx(1.0)
    assert all(abs(r["C"] - C0) <= 0.10 * C0 for r in recs), [r["C"] for r in recs]

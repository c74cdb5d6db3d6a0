"""pytransfer.methods.free_energy: iso-classification keeps C constant to first order (eq. 20),
the exact process on a tiny digits model, the practical variant, transfer, checkpoints."""

import json

import pytest
import torch

from pytransfer.free_energy import FreeEnergyModel, GibbsOperator
from pytransfer.methods.free_energy import (
    ProcessConfig,
    equilibrate,
    eta_schedule,
    iso_classification,
    transfer,
)

DT = torch.float64


def _move(model, delta):
    vec = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    torch.nn.utils.vector_to_parameters(vec + delta, model.parameters())


def test_iso_classification_direction_keeps_C_to_first_order():
    torch.manual_seed(0)
    model = FreeEnergyModel(4, 3, 2, 3).to(DT)
    x, y = torch.rand(5, 4, dtype=DT), torch.randint(0, 3, (5,))
    lam, gamma = 0.8, 1.4
    op = GibbsOperator(model, (x, y), lam, gamma, samples=6)
    th_l, info_l = op.solve(op.b_lambda(), maxiter=300, rtol=1e-11)
    th_g, info_g = op.solve(op.b_gamma(), maxiter=300, rtol=1e-11)
    assert info_l.converged and info_g.converged
    c_l, c_g = op.C_lambda(th_l), op.C_gamma(th_g)
    C0 = op.functionals().C

    def dC(h, gamma_dot, theta_dot):
        _move(model, h * theta_dot)
        C = op.functionals(lam + h, gamma + h * gamma_dot, recompute=True).C
        _move(model, -h * theta_dot)
        return C - C0

    g_dot = -c_l / c_g  # eq. 20 with lambda-dot = 1
    iso = th_l + g_dot * th_g
    d3, d4 = dC(1e-3, g_dot, iso), dC(1e-4, g_dot, iso)
    assert abs(d3) / abs(d4) > 50  # second order in h
    naive = dC(1e-3, 0.0, th_l)  # gamma held: C moves at first order, rate C_lambda
    assert naive / 1e-3 == pytest.approx(c_l, rel=1e-2)
    assert abs(d3) < 1e-2 * abs(naive)


@pytest.fixture(scope="module")
def digits():
    from pytransfer.data import digits_transfer

    d = digits_transfer()
    x = torch.cat([d.xs, d.xt_test]).double()
    y = torch.cat([d.ys, d.yt_test + 5])
    idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))[:400]
    return x[idx], y[idx]


def _equilibrated(digits, lam, gamma):
    torch.manual_seed(0)
    model = FreeEnergyModel(64, 16, 3, 10).to(DT)
    equilibrate(model, digits, lam, gamma, steps=300, lr=1e-2, batch_size=128)
    return model


def test_exact_iso_classification_keeps_C_while_lambda_doubles(digits, tmp_path):
    lam, gamma = 0.5, 2.0
    model = _equilibrated(digits, lam, gamma)
    cfg = ProcessConfig(steps=8, lam_rate=lam, samples=16, batch_size=128, minres_iters=40,
                        damping=1e-3)
    log = tmp_path / "iso.jsonl"
    recs = iso_classification(model, digits, lam, gamma, cfg, log_path=str(log))
    assert [json.loads(line) for line in log.read_text().splitlines()] == recs
    assert recs[-1]["lam"] == pytest.approx(2 * lam)
    C0 = recs[0]["C"]
    assert all(abs(r["C"] - C0) <= 0.05 * C0 for r in recs), [r["C"] for r in recs]
    assert all({"R", "D", "C", "F", "gamma", "t"} <= set(r) for r in recs)
    assert recs[-1]["D"] < recs[0]["D"]  # more weight on distortion: D falls (eq. 29)


def test_practical_variant_moves_lambda_up_and_gamma(digits):
    lam, gamma = 0.5, 2.0
    model = _equilibrated(digits, lam, gamma)
    cfg = ProcessConfig(steps=3, alpha=1.0, samples=16, batch_size=128, equil_steps=5)
    recs = iso_classification(model, digits, lam, gamma, cfg, variant="practical")
    r = recs[1]
    assert r["dC_dgamma"] < 0 < recs[-1]["lam"] - lam  # eq. 22: lambda-dot = -alpha dC/dgamma
    assert r["lam"] - lam == pytest.approx(-r["dC_dgamma"] / 3, rel=1e-9)
    assert r["gamma"] - gamma == pytest.approx(r["dC_dlambda"] / 3, rel=1e-9)


def test_checkpoint_resume_matches_uninterrupted_run(digits, tmp_path):
    lam, gamma = 0.5, 2.0
    cfg = ProcessConfig(steps=3, lam_rate=0.5, samples=8, batch_size=64, minres_iters=10,
                        equil_steps=2)
    model = _equilibrated(digits, lam, gamma)
    torch.manual_seed(1)
    full = iso_classification(model, digits, lam, gamma, cfg)
    ck = str(tmp_path / "proc.pt")
    model = _equilibrated(digits, lam, gamma)
    torch.manual_seed(1)
    first = iso_classification(model, digits, lam, gamma, cfg, checkpoint=ck, until=2)
    assert len(first) == 3
    saved = torch.load(ck, weights_only=True)  # tensors and plain types only
    assert saved["state"]["step"] == 2 and saved["state"]["records"] == first
    torch.manual_seed(123)  # the checkpoint restores the generators
    resumed = iso_classification(FreeEnergyModel(64, 16, 3, 10).to(DT), digits, lam, gamma,
                                 cfg, checkpoint=ck)
    assert len(resumed) == 4
    for a, b in zip(full, resumed, strict=True):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12)


def test_transfer_runs_mixture_and_logs(digits):
    x, y = digits
    src, tgt = (x[y < 5], y[y < 5]), (x[y >= 5], y[y >= 5])
    lam, gamma = 0.5, 2.0
    torch.manual_seed(0)
    model = FreeEnergyModel(64, 16, 3, 10).to(DT)
    equilibrate(model, src, lam, gamma, steps=200, lr=1e-2, batch_size=128)
    cfg = ProcessConfig(steps=3, lam_rate=0.5, samples=8, batch_size=64, minres_iters=20,
                        damping=1e-3)
    recs = transfer(model, src, tgt, lam, gamma, cfg)
    assert [r["t"] for r in recs] == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert all("C_t" in r for r in recs[1:])
    assert all(torch.isfinite(torch.tensor([r["R"], r["D"], r["C"], r["F"]])).all()
               for r in recs)


def test_eta_schedule_peaks_at_one():
    T = 100
    vals = [eta_schedule(k, T) for k in range(T + 1)]
    assert max(vals) == pytest.approx(1.0, abs=1e-3) and vals[0] == 0 and vals[-1] == 0
    assert vals.index(max(vals)) == 67  # argmax of s^2 (1 - s) is s = 2/3

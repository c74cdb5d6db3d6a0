"""Hostile input (issue 15): every public op raises a clear error, or returns the right value,
whatever its input; nothing crashes, hangs or returns NaN. Probes that crashed or hung the
process before run in one subprocess with a timeout, so a regression fails a test instead of
killing pytest."""

import json
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

from pytransfer import _checks, mmd
from pytransfer.free_energy import FreeEnergyModel, GibbsOperator, floor_multiplier, gibbs_weights
from pytransfer.hscore import (
    h_score,
    optimal_h_score,
    rank_sources,
    transferability,
)
from pytransfer.nn import HScore, OTLoss
from pytransfer.ot import sinkhorn

# ---------------------------------------------------------------- crash and hang probes
#: name -> code run in the subprocess; each must raise (ValueError or TypeError) or return
CRASH_PROBES = {
    "bandwidth_widths": "mmd.bandwidth(torch.rand(4, 3), torch.rand(4, 5))",
    "bandwidth_width_2000": "mmd.bandwidth(torch.rand(4, 2000), torch.rand(4, 3))",
    "bandwidth_mixed_dtypes": "mmd.bandwidth(torch.rand(4, 3), torch.rand(4, 3).double())",
    "sinkhorn_empty_batch_unchecked": (
        "sinkhorn(torch.zeros(0, 3), torch.zeros(0, 4), torch.rand(3, 4), 0.1, "
        "check_inputs=False)"),
    "sinkhorn_empty_batch_scaling": (
        "sinkhorn(torch.zeros(0, 3), torch.zeros(0, 4), torch.rand(3, 4), 0.1, "
        "check_inputs=False, method='scaling')"),
    "pixelwise_huge_class_count": (
        "pixelwise_h_score(torch.randn(8, 2, dtype=torch.float64), "
        "torch.zeros(8, 3, dtype=torch.long), 2**40)"),
    "hscore_stats_d_1e5": "HScoreStats(100_000, 3)",
    "hscore_2_40_classes": "h_score(torch.randn(8, 2), torch.tensor([0] * 7 + [2**40]))",
    "sinkhorn_expanded_cost_copy": (
        "sinkhorn(torch.full((1, 2**18), 2.0**-18), torch.full((1, 2**18), 2.0**-18), "
        "torch.zeros(1, 1, 1).expand(1, 2**18, 2**18), 0.1, backend='cpu', method='log', "
        "check_inputs=False)"),
}

_RUNNER = """
import json, sys, torch
from pytransfer import mmd
from pytransfer.hscore import HScoreStats, h_score, pixelwise_h_score
from pytransfer.ot import sinkhorn
for name, code in json.loads(sys.argv[1]).items():
    try:
        eval(code)
        out = "returned"
    except (ValueError, TypeError) as exc:
        out = type(exc).__name__ + ": " + str(exc)[:200]
    print(json.dumps([name, out]), flush=True)
"""


@pytest.fixture(scope="module")
def crash_probe_results():
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_RUNNER),
                             json.dumps(CRASH_PROBES)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:  # a probe hangs: the ones after it never report
        proc.kill()
        out, err = proc.communicate()
        err += "\n(killed after 120 s: a probe hangs)"
    done = dict(json.loads(line) for line in out.splitlines() if line.startswith("["))
    return done, f"rc {proc.returncode}: {err[-2000:]}"


@pytest.mark.parametrize("name", sorted(CRASH_PROBES))
def test_probe_neither_crashes_nor_hangs(crash_probe_results, name):
    done, why = crash_probe_results
    assert name in done, f"the probe process died before reporting ({why})"
    assert done[name].startswith(("ValueError", "TypeError")), done[name]


def test_size_errors_say_what_was_asked_and_what_fits(crash_probe_results):
    done, _ = crash_probe_results
    for name in ("hscore_stats_d_1e5", "pixelwise_huge_class_count", "hscore_2_40_classes",
                 "sinkhorn_expanded_cost_copy"):
        assert "GiB" in done[name] and "memory" in done[name], done[name]


# ---------------------------------------------------------------- errors, table-driven
def _x(n=8, d=3, seed=0, dtype=torch.float32):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _tiny_model():
    torch.manual_seed(0)
    return FreeEnergyModel(4, 3, 2, 3).double(), torch.rand(3, 4, dtype=torch.float64)


def _operator(y=None, **kw):
    model, x = _tiny_model()
    return GibbsOperator(model, (x, torch.tensor([0, 1, 2]) if y is None else y), 1.0, 1.0,
                         samples=4, **kw)


def _p(B=4, L=3, seed=0):
    return torch.rand(B, L, generator=torch.Generator().manual_seed(seed)).softmax(-1)


ERRORS = [
    # (name, call, exception, message)
    ("bandwidth integer", lambda: mmd.bandwidth(torch.ones(4, 3, dtype=torch.long),
                                                torch.ones(4, 3, dtype=torch.long)),
     TypeError, "xs must have a floating dtype"),
    ("bandwidth NaN", lambda: mmd.bandwidth(torch.full((4, 3), float("nan")), _x()),
     ValueError, "xs contains NaN"),
    ("bandwidth float32 overflow", lambda: mmd.bandwidth(_x() * 1e25, _x(seed=1) * 1e25),
     ValueError, "overflows torch.float32"),
    ("class_pair names fs/ft", lambda: mmd.class_pair_mmd(_x(), torch.arange(8) % 2, _x(d=4),
                                                          torch.arange(8) % 2),
     ValueError, "fs and ft must have the same feature dimension"),
    ("class_pair bad num_source_classes", lambda: mmd.class_pair_mmd(
        _x(), torch.arange(8) % 2, _x(), torch.arange(8) % 2, num_source_classes=-1),
     ValueError, "num_source_classes must be >= 1"),
    ("class_pair num_target_classes too large", lambda: mmd.class_pair_mmd(
        _x(), torch.arange(8) % 2, _x(), torch.arange(8) % 2, num_target_classes=2**40),
     ValueError, "num_target_classes=1099511627776 is too large"),
    ("OTLoss names p_source", lambda: OTLoss(torch.rand(3, 3))(_p() * 2, _p()),
     ValueError, "p_source and p_target must have equal total mass"),
    ("OTLoss names p_target", lambda: OTLoss(torch.rand(3, 3))(_p(), -_p()),
     ValueError, "p_target has negative entries"),
    ("OTLoss widths vs cost", lambda: OTLoss(torch.rand(3, 4))(_p(), _p()),
     ValueError, r"p_source \(B, 3\) and p_target \(B, 3\) must match cost \(3, 4\)"),
    ("OTLoss empty batch", lambda: OTLoss(torch.rand(3, 3))(_p(B=0), _p(B=0)),
     ValueError, "p_source and p_target hold no problems"),
    ("sinkhorn empty batch", lambda: sinkhorn(torch.zeros(0, 3), torch.zeros(0, 4),
                                              torch.rand(3, 4), 0.1),
     ValueError, "batch size 0"),
    ("sinkhorn eps underflows float32", lambda: sinkhorn(_p(), _p(seed=1), torch.rand(3, 3),
                                                         1e-45),
     ValueError, "eps=1e-45 is below the smallest normal"),
    ("sinkhorn max|C|/eps overflows", lambda: sinkhorn(_p(), _p(seed=1), torch.rand(3, 3) + 1,
                                                       2e-38),
     ValueError, "overflows"),
    ("gibbs_weights overflowing logits", lambda: gibbs_weights(
        torch.full((2, 3), 3e38), torch.full((2, 3), 3e38)),
     ValueError, "overflows torch.float32"),
    ("GibbsOperator zero data_weights", lambda: _operator(
        data_weights=torch.zeros(3, dtype=torch.float64)), ValueError, "positive sum"),
    ("GibbsOperator NaN data_weights", lambda: _operator(
        data_weights=torch.tensor([1.0, float("nan"), 1.0], dtype=torch.float64)),
     ValueError, "data_weights contains NaN"),
    ("GibbsOperator float labels of shape (X,)", lambda: _operator(
        y=torch.tensor([0.0, 1.0, 2.0])), TypeError, "must hold integer labels"),
    ("GibbsOperator out-of-range labels", lambda: _operator(y=torch.tensor([0, 1, 7])),
     ValueError, r"labels outside \[0, 3\)"),
    ("GibbsOperator negative labels", lambda: _operator(y=torch.tensor([0, -1, 2])),
     ValueError, "negative labels"),
    ("GibbsOperator.solve NaN rhs", lambda: (lambda op: op.solve(
        torch.full((op.numel,), float("nan"), dtype=torch.float64)))(_operator()),
     ValueError, "b contains NaN"),
    ("HScore out-of-range labels", lambda: HScore(3, 2)(_x(d=2), torch.tensor([0, 1, 2, 3] * 2)),
     ValueError, r"labels outside \[0, 3\)"),
    ("HScore empty batch", lambda: HScore(3, 2)(_x(n=0, d=2), torch.zeros(0, dtype=torch.long)),
     ValueError, "batch size 0"),
    ("rank_sources empty labels", lambda: rank_sources({"a": _x(n=0)},
                                                       torch.zeros(0, dtype=torch.long)),
     ValueError, "y_target is empty"),
    ("transferability float labels", lambda: transferability(_x(), torch.rand(8), _x()),
     TypeError, "y_target must hold integer labels"),
    ("optimal_h_score max_iter=0", lambda: optimal_h_score(torch.full((2, 2), 0.25), max_iter=0),
     ValueError, "max_iter must be >= 1"),
    ("h_score LW singular advice", lambda: h_score(
        torch.cat([_x(n=50, d=2, dtype=torch.float64)] * 2, -1), torch.arange(50) % 2,
        shrinkage=0.0), ValueError, "even with shrinkage=0.0"),
    ("h_score reference singular", lambda: h_score(
        torch.cat([_x(n=50, d=2, dtype=torch.float64)] * 2, -1), torch.arange(50) % 2,
        backend="reference"), ValueError, "singular"),
]


@pytest.mark.parametrize(("call", "error", "match"), [e[1:] for e in ERRORS],
                         ids=[e[0] for e in ERRORS])
def test_bad_input_gets_a_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---------------------------------------------------------------- values that were wrong
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_subnormal_mass_gives_finite_implicit_gradients(backend):
    """a = [.5, 1e-40, .5] (a confident float32 softmax) made every gradient NaN; masses
    below finfo.tiny take the zero-mass limit, which float64 (where 1e-40 is normal) matches."""
    gen = torch.Generator().manual_seed(3)
    b = torch.tensor([0.3, 0.7], dtype=torch.float64)
    C = torch.rand(3, 2, dtype=torch.float64, generator=gen)
    grads = {}
    for dt in (torch.float32, torch.float64):
        a = torch.tensor([0.5, 1e-40, 0.5], dtype=dt, requires_grad=True)
        cost = C.to(dt).requires_grad_()
        res = sinkhorn(a, b.to(dt), cost, 0.1, grad="implicit", tol=1e-7, max_iter=10_000,
                       backend=backend)
        res.transport_cost.backward()
        assert torch.isfinite(a.grad).all() and torch.isfinite(cost.grad).all()
        grads[dt] = a.grad.double()
    torch.testing.assert_close(grads[torch.float32], grads[torch.float64], rtol=1e-4,
                               atol=1e-5)


@pytest.mark.parametrize("estimator", ["linear", "quadratic"])
@pytest.mark.parametrize("scale", [1e-20, 1e20])
def test_mk_mmd_is_scale_invariant(estimator, scale):
    x, y = _x(n=32, d=4), _x(n=32, d=4, seed=1) + 0.5
    want = mmd.mk_mmd(x.double(), y.double(), estimator=estimator)
    got = mmd.mk_mmd(scale * x, scale * y, estimator=estimator)
    assert torch.isfinite(got)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)


def test_float32_offset_costs_no_precision():
    """Features sharing an offset of 1e4: the GEMM distance identity cancelled (20 % and 174 %
    off, negative costs); the estimates are now computed about the pooled mean."""
    x, y = _x(n=32, d=4), _x(n=32, d=4, seed=1) + 0.5
    ys, yt = torch.arange(32) % 2, torch.arange(32) % 3
    want = mmd.mk_mmd(x.double(), y.double(), estimator="quadratic")
    got = mmd.mk_mmd(x + 1e4, y + 1e4, estimator="quadratic")
    torch.testing.assert_close(got.double(), want, rtol=2e-3, atol=1e-5)
    want_c = mmd.class_pair_mmd(x.double(), ys, y.double(), yt)
    got_c = mmd.class_pair_mmd(x + 1e4, ys, y + 1e4, yt)
    torch.testing.assert_close(got_c.double(), want_c, rtol=2e-3, atol=1e-4)


def test_ledoit_wolf_gradient_includes_the_intensity():
    f = _x(n=20, d=3, dtype=torch.float64).requires_grad_()
    y = torch.arange(20) % 3
    assert torch.autograd.gradcheck(
        lambda t: h_score(t, y, shrinkage="ledoit-wolf", backend="reference"), (f,))


def test_transferability_with_zero_optimal_h_score_raises():
    y = torch.arange(40) % 2
    useless = torch.randn(40, 1, dtype=torch.float64)
    useless = useless - torch.stack([useless[y == c].mean(0) for c in (0, 1)])[y]  # class means 0
    with pytest.raises(ValueError, match="carries no information"):
        transferability(_x(n=40, d=2, dtype=torch.float64), y, useless)


def test_otloss_warns_once_and_keeps_the_last_result():
    cost = torch.rand(3, 3, generator=torch.Generator().manual_seed(0))
    loss = OTLoss(cost, eps=1e-3, max_iter=5)
    ps, pt = _p(B=8), _p(B=8, seed=1)
    with pytest.warns(RuntimeWarning, match=r"(\d) of 8 Sinkhorn problems did not converge"):
        loss(ps, pt)
    assert loss.last_result is not None and not bool(loss.last_result.converged.all())
    assert loss.last_result.transport_cost.grad_fn is None  # no graph kept alive
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss(ps, pt)  # once per module
        OTLoss(cost, eps=1e-3, max_iter=5, tol=0)(ps, pt)  # a fixed iteration count: no warning


@pytest.mark.filterwarnings("ignore:OTLoss")  # float16 masses differ by their rounding
def test_otloss_keeps_a_float32_cost_for_half_inputs():
    cost = torch.rand(3, 3, generator=torch.Generator().manual_seed(0)) + 1 / 3
    loss = OTLoss(cost, eps=0.1, max_iter=1000, tol=1e-6)
    ps, pt = _p(), _p(seed=1)
    half = loss(ps.half(), pt.half())
    exact = sinkhorn(ps.half().float(), pt.half().float(), cost, 0.1, max_iter=1000,
                     tol=1e-6, check_inputs=False).transport_cost.mean()
    torch.testing.assert_close(half, exact)  # the cost itself was not rounded to float16


def test_unconverged_solve_warns():
    op = _operator()
    with pytest.warns(RuntimeWarning, match="minres stopped unconverged"):
        _, info = op.solve(op.b_lambda(), maxiter=1, rtol=1e-30)
    assert not info.converged


def test_kernel_weights_warn_at_max_sweeps(monkeypatch):
    from pytransfer.mmd import weights

    x, y = _x(n=32, d=4), _x(n=32, d=4, seed=1) + 0.3
    monkeypatch.setattr(weights, "MAX_SWEEPS", 1)
    with pytest.warns(RuntimeWarning, match="MAX_SWEEPS=1 sweeps, unconverged"):
        mmd.optimize_kernel_weights(x, y)


def test_multiplier_floor_warns_when_it_binds():
    assert floor_multiplier("lam", 0.5) == 0.5
    with pytest.warns(RuntimeWarning, match="lam = -0.1 after the step is below 1e-06"):
        assert floor_multiplier("lam", -0.1) == 1e-6


def test_fits_names_the_request_and_the_limit():
    _checks.fits("small", 1 << 20, "cpu")
    with pytest.raises(ValueError, match=r"huge needs 1\.074e\+09 GiB, more than the .* GiB"):
        _checks.fits("huge", 1 << 60, "cpu")

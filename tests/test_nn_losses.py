"""The drop-in losses' fast paths (issue 13) equal the general ops they bypass."""

import pytest
import torch

from pytransfer.mmd import mk_mmd
from pytransfer.nn import MKMMDLoss, OTLoss
from pytransfer.ot import sinkhorn


def _feats(n, d, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=gen, dtype=dtype),
            torch.randn(n, d, generator=gen, dtype=dtype) * 1.3 + 0.2)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n,d", [(2, 1), (6, 7), (64, 33)])
def test_mkmmd_fast_path_equals_mk_mmd(dtype, n, d):
    xs, xt = _feats(n, d, dtype)
    loss = MKMMDLoss()
    assert loss._fast_path(xs, xt)
    grads = []
    for fn in (loss, lambda x, y: mk_mmd(x, y, backend="reference")):
        x, y = xs.clone().requires_grad_(True), xt.clone().requires_grad_(True)
        value = fn(x, y)
        value.backward()
        grads.append((value.detach(), x.grad, y.grad))
    tol = dict(rtol=1e-9, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-6)
    for ours, ref in zip(*grads, strict=True):
        torch.testing.assert_close(ours, ref, **tol)


def test_mkmmd_fast_path_degenerate_batch():
    """All rows equal: bandwidth 0 is floored as in resolve; the value is 0, not NaN."""
    x = torch.ones(4, 3)
    assert MKMMDLoss()(x, x.clone()).item() == 0.0


@pytest.mark.parametrize("bad,match", [("nan", "xs contains NaN"), ("inf", "xt contains NaN")])
def test_mkmmd_fast_path_names_bad_values(bad, match):
    xs, xt = _feats(4, 3, torch.float32)
    if bad == "nan":
        xs[1, 2] = float("nan")
    else:
        xt[0, 0] = float("inf")
    with pytest.raises(ValueError, match=match):
        MKMMDLoss()(xs, xt)


def test_mkmmd_other_configurations_take_the_general_path():
    xs, xt = _feats(5, 3, torch.float64)
    assert not MKMMDLoss()._fast_path(xs, xt)  # odd n: mk_mmd raises with its message
    with pytest.raises(ValueError, match="even batch size"):
        MKMMDLoss()(xs, xt)
    assert not MKMMDLoss(estimator="quadratic")._fast_path(xs[:4], xt[:4])
    assert not MKMMDLoss(weights=torch.full((19,), 1 / 19))._fast_path(xs[:4], xt[:4])


def test_ot_loss_takes_the_fused_op_and_equals_the_log_path():
    """OTLoss at JTLN sizes: value and gradient equal the log-domain path."""
    gen = torch.Generator().manual_seed(0)
    ls, lt = torch.randn(9, 5, generator=gen), torch.randn(9, 3, generator=gen)
    cost = torch.rand(5, 3, generator=gen)
    grads = []
    for method in ("auto", "log"):
        x = ls.clone().requires_grad_(True)
        if method == "auto":
            value = OTLoss(cost, eps=0.1, tol=1e-6)(x.softmax(-1), lt.softmax(-1))
        else:
            value = sinkhorn(x.softmax(-1), lt.softmax(-1), cost, 0.1, max_iter=100, tol=1e-6,
                             method="log").transport_cost.mean()
        value.backward()
        grads.append((value.detach(), x.grad))
    for ours, ref in zip(*grads, strict=True):
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-7)


def _ot_problem(B=6, n=5, m=3, dtype=torch.float64, seed=1):
    gen = torch.Generator().manual_seed(seed)
    ls = torch.randn(B, n, generator=gen, dtype=dtype)
    lt = torch.randn(B, m, generator=gen, dtype=dtype)
    return ls.softmax(-1), lt.softmax(-1), torch.rand(n, m, generator=gen, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ot_loss_fast_path_equals_sinkhorn_with_its_checks(dtype):
    """The fast path is taken, and value, gradients and last_result equal the log-domain
    sinkhorn's (another kernel), float32 and float64, also for a float32 cost."""
    ps, pt, cost = _ot_problem(dtype=dtype)
    tol = 1e-9 if dtype == torch.float64 else 1e-5
    loss = OTLoss(cost.float(), eps=0.2, tol=tol, max_iter=500)
    assert loss._fast(ps, pt) is not None
    out = []
    for fn in (loss, lambda a, b: sinkhorn(a, b, cost.float().to(dtype), 0.2, max_iter=500,
                                           tol=tol, method="log").transport_cost.mean()):
        a, b = ps.clone().requires_grad_(True), pt.clone().requires_grad_(True)
        value = fn(a, b)
        value.backward()
        out.append((value.detach(), a.grad, b.grad))
    close = (dict(rtol=1e-9, atol=1e-11) if dtype == torch.float64
             else dict(rtol=1e-5, atol=1e-6))
    for ours, ref in zip(*out, strict=True):
        torch.testing.assert_close(ours, ref, **close)
    ref = sinkhorn(ps, pt, cost.float().to(dtype), 0.2, max_iter=500, tol=tol, method="log")
    for name in ("f", "g", "n_iter", "converged"):
        torch.testing.assert_close(getattr(loss.last_result, name), getattr(ref, name), **close)
    assert not loss.last_result.transport_cost.requires_grad


def test_ot_loss_fast_path_follows_the_cost_and_settings():
    """The cached working cost is rebuilt when the buffer changes in place, is replaced, or
    eps changes; bad settings set after construction get sinkhorn's errors."""
    ps, pt, cost = _ot_problem()
    loss = OTLoss(cost.clone(), eps=0.2, max_iter=300, tol=1e-9)

    def want(c, eps):
        return sinkhorn(ps, pt, c, eps, max_iter=300, tol=1e-9).transport_cost.mean()

    torch.testing.assert_close(loss(ps, pt), want(cost, 0.2))
    loss.cost.mul_(2.0)  # in place: the version counter moves
    torch.testing.assert_close(loss(ps, pt), want(2 * cost, 0.2))
    loss.cost = cost.flip(0).contiguous()  # replaced
    torch.testing.assert_close(loss(ps, pt), want(cost.flip(0), 0.2))
    loss.eps = 0.3
    torch.testing.assert_close(loss(ps, pt), want(cost.flip(0), 0.3))
    loss.eps = 1e-320
    with pytest.raises(ValueError, match=r"eps=.* is below the smallest normal"):
        loss(ps, pt)
    loss.eps, loss.max_iter = 0.2, 0
    with pytest.raises(ValueError, match="max_iter must be >= 1"):
        loss(ps, pt)
    loss.max_iter, loss.tol = 300, float("nan")
    with pytest.raises(ValueError, match="tol must be a finite number >= 0"):
        loss(ps, pt)


@pytest.mark.parametrize("bad,match", [
    (lambda p: p * 2, "p_source and p_target must have equal total mass"),
    (lambda p: torch.where(p > p.mean(), p, -p), "p_source has negative entries"),
    (lambda p: p.index_put((torch.tensor([0]), torch.tensor([1])), torch.tensor(float("nan"),
                                                                        dtype=p.dtype)),
     "p_source contains NaN"),
])
def test_ot_loss_fast_path_input_errors_name_the_argument(bad, match):
    ps, pt, cost = _ot_problem()
    loss = OTLoss(cost)
    assert loss._fast(bad(ps), pt) is None  # the one C++ pass refuses; the named check runs
    with pytest.raises(ValueError, match=match):
        loss(bad(ps), pt)


def test_ot_loss_other_configurations_take_the_general_path():
    ps, pt, cost = _ot_problem()
    assert OTLoss(cost, grad="implicit")._fast(ps, pt) is None
    assert OTLoss(cost, backend="reference")._fast(ps, pt) is None
    assert OTLoss(cost)._fast(ps.T.contiguous().T, pt) is None  # not contiguous
    assert OTLoss(cost, eps=0.001)._fast(ps, pt) is None  # (max C - min C)/eps: log domain
    assert OTLoss(cost.requires_grad_(True))._fast(ps, pt) is None


def test_mkmmd_eager_path_skips_the_custom_ops(monkeypatch):
    """MKMMDLoss's eager call runs the plain C++ functions, not the registered ops (which
    stay for torch.compile and opcheck)."""
    from pytransfer.mmd import _ops as mmd_ops

    def boom(*args):
        raise AssertionError("custom op called")

    monkeypatch.setattr(mmd_ops, "mmd_linear_fwd_cpu", boom)
    monkeypatch.setattr(mmd_ops, "mmd_linear_bwd_cpu", boom)
    xs, xt = _feats(6, 4, torch.float64)
    x = xs.clone().requires_grad_(True)
    MKMMDLoss()(x, xt).backward()
    assert x.grad is not None


def test_mkmmd_fast_path_names_bandwidth_overflow():
    xs, xt = _feats(4, 3, torch.float32)
    with pytest.raises(ValueError, match=r"overflows torch\.float32"):
        MKMMDLoss()(xs * 1e25, xt * 1e25)
    with pytest.raises(ValueError, match="xs contains NaN"):
        MKMMDLoss(check_inputs=False)(xs.fill_(float("nan")), xt)

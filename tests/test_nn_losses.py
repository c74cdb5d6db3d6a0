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

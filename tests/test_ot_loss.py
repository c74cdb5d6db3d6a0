"""pytransfer.nn.OTLoss (JTLN eq. 7-11); the training module is tested in test_jtln.py."""

import pytest
import torch

from pytransfer.nn import OTLoss
from pytransfer.ot import sinkhorn


def _outputs(B=6, Ls=4, Lt=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ls = torch.randn(B, Ls, generator=gen, dtype=torch.float64, requires_grad=True)
    lt = torch.randn(B, Lt, generator=gen, dtype=torch.float64, requires_grad=True)
    cost = torch.rand(Ls, Lt, generator=gen, dtype=torch.float64)
    return ls, lt, cost


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_value_is_sinkhorn_transport_cost(reduction):
    ls, lt, cost = _outputs()
    loss = OTLoss(cost, eps=0.1, reduction=reduction)(ls.softmax(-1), lt.softmax(-1))
    per = sinkhorn(ls.softmax(-1), lt.softmax(-1), cost, 0.1, max_iter=100).transport_cost
    expected = {"mean": per.mean(), "sum": per.sum(), "none": per}[reduction]
    torch.testing.assert_close(loss, expected)


def test_gradient_reaches_logits_with_jtln_formula():
    ls, lt, cost = _outputs()
    ps, pt = ls.softmax(-1), lt.softmax(-1)
    OTLoss(cost, eps=0.1, max_iter=1000, tol=1e-12, reduction="sum")(ps, pt).backward(
        retain_graph=True)
    res = sinkhorn(ps.detach(), pt.detach(), cost, 0.1, max_iter=1000, tol=1e-12)
    # d loss / d p_source = f - mean f (eq. 11), chained through the softmax
    expected, = torch.autograd.grad(ps, ls, res.f - res.f.mean(-1, keepdim=True))
    torch.testing.assert_close(ls.grad, expected)
    assert lt.grad is not None and torch.isfinite(lt.grad).all()


def test_implicit_grad_matches_finite_differences():
    ls, lt, cost = _outputs(B=2)
    loss = OTLoss(cost, eps=0.2, max_iter=100000, tol=1e-15, grad="implicit", reduction="sum")
    assert torch.autograd.gradcheck(lambda x, y: loss(x.softmax(-1), y.softmax(-1)), (ls, lt),
                                    eps=1e-6, atol=1e-7, rtol=1e-4)


def test_bad_reduction():
    with pytest.raises(ValueError, match="reduction must be one of"):
        OTLoss(torch.rand(2, 2), reduction="avg")


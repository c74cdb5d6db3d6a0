"""The fixed per-call economies of OTLoss's fast path (issue 13) change no value: the block
kernel's outputs in one allocation (``_ext.Outputs``), ``last_result`` made on
first read, the reduction inside the autograd Function, the settings checked once per
assignment."""

import io

import pytest
import torch

from pytransfer import _ext
from pytransfer._autograd import direct_apply
from pytransfer.nn import MKMMDLoss, OTLoss, mmd_loss
from pytransfer.ot import SinkhornResult, block, sinkhorn

pytestmark = pytest.mark.skipif(_ext.unavailable() is not None, reason="no compiled extension")


def _problem(B=5, n=4, m=3, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ps = torch.randn(B, n, generator=gen, dtype=dtype).softmax(-1)
    pt = torch.randn(B, m, generator=gen, dtype=dtype).softmax(-1)
    return ps, pt, torch.rand(n, m, generator=gen, dtype=dtype)


def _leaves(*xs):
    return [x.detach().clone().requires_grad_(True) for x in xs]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_last_result_made_on_read_equals_the_general_path(dtype):
    """Made only when read, once, detached: the same tensors (bit for bit, dtype, shape,
    contiguous) as ``sinkhorn``'s on the same block kernel."""
    ps, pt, cost = _problem(dtype=dtype)
    loss = OTLoss(cost, eps=0.2, max_iter=40, tol=1e-7)
    (x,) = _leaves(ps)
    loss(x, pt)
    assert type(loss._last) is _ext.Outputs  # nothing made yet
    res = loss.last_result
    assert isinstance(res, SinkhornResult) and loss.last_result is res
    want = sinkhorn(ps, pt, cost, 0.2, max_iter=40, tol=1e-7)
    for name in SinkhornResult._fields[:7]:
        got, ref = getattr(res, name), getattr(want, name)
        assert got.dtype == ref.dtype and got.shape == ref.shape, name
        assert got.is_contiguous() and not got.requires_grad, name
        assert torch.equal(got, ref), name
    assert res.plan is None
    loss.last_result = None  # still assignable
    assert loss.last_result is None


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_deferred_objective_keeps_what_the_forward_saw(dtype):
    """The objective, computed when last_result is read, comes from the kernel's copies of the
    inputs and the forward's eps: changing the inputs in place or eps after the forward leaves
    it (bit for bit ``sinkhorn``'s)."""
    ps, pt, cost = _problem(B=19, n=7, m=5, dtype=dtype)
    ps[3, 0] = 0  # a zero-mass entry (off the support, masked out of the objective)
    ps = ps / ps.sum(-1, keepdim=True)
    want = sinkhorn(ps, pt, cost, 0.2, max_iter=40, tol=0.0).objective
    loss = OTLoss(cost, eps=0.2, max_iter=40, tol=0.0)  # (no convergence warning reads it)
    a, b = ps.clone(), pt.clone()
    loss(a, b)
    assert type(loss._last) is _ext.Outputs
    a.mul_(0.5), b.fill_(1.0)
    loss.eps = 0.7
    assert torch.equal(loss.last_result.objective, want)


def _step(loss, logits, pt):
    """One training step on ``loss``: (value, gradient of the logits); the graph is released
    when it returns."""
    x = logits.detach().requires_grad_(True)
    value = loss(x.softmax(-1), pt)
    value.backward()
    return value.detach(), x.grad


def test_outputs_written_over_only_when_nothing_else_holds_them():
    """A call reuses the last call's kernel outputs while its last_result is unread, with the
    results of a fresh module, also while the earlier loss tensor lives (its backward reads
    the dual gradients, which have an allocation of their own, reused only once that graph
    is released, and gives the same gradient); never after last_result was read (its
    tensors are views of them)."""
    import weakref

    ps, pt, cost = _problem(B=21, n=6, m=4)
    logits = ps.log()
    loss, fresh = (OTLoss(cost, eps=0.2, max_iter=30, tol=0.0) for _ in range(2))
    _step(loss, logits, pt)
    first, first_grads = weakref.ref(loss._last.flat), weakref.ref(loss._last_grads.flat)
    got = _step(loss, 1.5 * logits, pt)
    assert loss._last.flat is first() and loss._last_grads.flat is first_grads()
    for x, y in zip(got, _step(fresh, 1.5 * logits, pt), strict=True):
        assert torch.equal(x, y)
    # the earlier graph alive: written over all the same, and that graph's gradient unchanged
    (x1,) = _leaves(logits)
    held = loss(x1.softmax(-1), pt)
    kept, kept_grads = weakref.ref(loss._last.flat), weakref.ref(loss._last_grads.flat)
    _step(loss, 2 * logits, pt)
    assert loss._last.flat is kept() and loss._last_grads.flat is not kept_grads()
    held.backward()
    assert torch.equal(x1.grad, _step(fresh, logits, pt)[1])
    # anything else holding the outputs (here the test itself): not written over
    other = loss._last
    before = other.tensor(0).clone()
    _step(loss, 2.5 * logits, pt)
    assert loss._last is not other and torch.equal(other.tensor(0), before)
    del other
    # last_result read: its tensors stay as they were
    res = loss.last_result
    before = [t.clone() for t in res[:7]]
    _step(loss, 3 * logits, pt)
    assert all(torch.equal(t, b) for t, b in zip(res[:7], before, strict=True))
    # without gradient, unreduced: the losses returned are not views of the outputs
    loss.reduction = "none"
    with torch.no_grad():
        values = loss(ps, pt)
        kept = values.clone()
        loss(ps.flip(0), pt)
    assert torch.equal(values, kept)


def test_refused_inputs_leave_the_last_result_and_the_outputs_alone():
    """The outputs' value checks run in the kernel call, before anything is written: a call
    refused there (then named by the general path) leaves the last call's outputs, which the
    next call may write over, and its last_result as they were. A cost made non-finite in
    place takes the general path."""
    ps, pt, cost = _problem(B=9)
    loss = OTLoss(cost, eps=0.2, max_iter=30, tol=0.0)
    with torch.no_grad():
        loss(ps, pt)
    want = sinkhorn(ps, pt, cost, 0.2, max_iter=30, tol=0.0)
    bad = ps.clone()
    bad[2, 1] = -bad[2, 1]
    assert loss._fast(bad, pt) is None
    with pytest.raises(ValueError, match="p_source has negative entries"):
        loss(bad, pt)
    for name in SinkhornResult._fields[:7]:
        assert torch.equal(getattr(loss.last_result, name), getattr(want, name)), name
    loss.cost[0, 0] = float("inf")
    assert loss._fast(ps, pt) is None


def test_last_result_changed_in_place_leaves_the_gradient_alone():
    """The backward's potentials are views of the same allocation as last_result's, kept on
    ctx: changing last_result in place before backward neither errors nor alters it."""
    ps, pt, cost = _problem()
    grads = []
    for spoil in (False, True):
        x, y = _leaves(ps, pt)
        loss = OTLoss(cost, eps=0.2, reduction="sum")
        value = loss(x, y)
        if spoil:
            for t in loss.last_result[:7]:
                t.zero_()
        value.backward()
        grads.append((x.grad, y.grad))
    for got, want in zip(*grads, strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_reduction_inside_the_function_equals_reducing_its_output(reduction, dtype):
    """Value and both gradients bit for bit as reduction="none" followed by the torch
    reduction (its own autograd node), under a non-unit upstream gradient."""
    ps, pt, cost = _problem(B=7, dtype=dtype)
    out = []
    for fused in (True, False):
        x, y = _leaves(ps, pt)
        if fused:
            value = OTLoss(cost, eps=0.2, reduction=reduction)(x, y)
        else:
            value = getattr(OTLoss(cost, eps=0.2, reduction="none")(x, y), reduction)()
        (3.0 * value).backward()
        out.append((value.detach(), x.grad, y.grad))
    for got, want in zip(*out, strict=True):
        assert torch.equal(got, want)


def test_unreduced_output_is_its_own_tensor():
    """reduction="none" returns a tensor that may be changed in place (not a view of the
    kernel's outputs) and keeps its gradient."""
    ps, pt, cost = _problem()
    grads = []
    for reduction in ("none", "sum"):
        (x,) = _leaves(ps)
        value = OTLoss(cost, eps=0.2, reduction=reduction)(x, pt)
        if reduction == "none":
            value.mul_(2.0)
            value = value.sum()
        else:
            value = 2.0 * value
        value.backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-15)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("need", ["a", "b", "abC"])
def test_transport_cost_gradients_equal_the_op(need, reduction):
    """``block.transport_cost`` (one node, reduction included) against the registered op's
    autograd followed by the torch reduction, cost gradient included."""
    ps, pt, cost = _problem(B=4)
    w = torch.rand(4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    out = []
    for fused in (True, False):
        a, b, C = (x.detach().clone().requires_grad_(k in need)
                   for x, k in ((ps, "a"), (pt, "b"), (cost[None], "C")))
        if fused:
            value, _, _ = block.transport_cost(a, b, C, 0.1, 200, 1e-10, reduction)
        else:
            per = block.sinkhorn_dual_cpu(a, b, C, 0.1, 200, 1e-10)[0]
            value = per if reduction == "none" else getattr(per, reduction)()
        (w * value if reduction == "none" else 2.5 * value).sum().backward()
        out.append((value.detach(), *(x.grad for x in (a, b, C) if x.requires_grad)))
    for got, want in zip(*out, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("which", ["OTLoss", "MKMMDLoss"])
def test_direct_apply_equals_function_apply(monkeypatch, which):
    """The fused losses apply their Function through ``_autograd.direct_apply`` (the C++
    apply): the value and gradients of ``Function.apply``, bit for bit. Under an active
    functorch transform it is ``Function.apply``, which refuses as before (no
    setup_context)."""
    ps, pt, cost = _problem(B=6, n=4, m=4)
    module, name, cls = ((block, "_apply_transport", block._DualTransport) if which == "OTLoss"
                         else (mmd_loss, "_apply_linear", mmd_loss._LinearCPU))
    loss = OTLoss(cost, eps=0.1, max_iter=50, tol=0.0) if which == "OTLoss" else MKMMDLoss()
    out = []
    for apply in (getattr(module, name), cls.apply):
        monkeypatch.setattr(module, name, apply)
        x, y = _leaves(ps, pt)
        value = loss(x, y)
        (2.0 * value).backward()
        out.append((value.detach(), x.grad, y.grad))
    for got, want in zip(*out, strict=True):
        assert torch.equal(got, want)


def test_direct_apply_under_a_functorch_transform_is_function_apply(monkeypatch):
    direct = direct_apply(block._DualTransport)
    monkeypatch.setattr(torch._C, "_are_functorch_transforms_active", lambda: True)
    ps, pt, cost = _problem(B=3)
    x, y = _leaves(ps, pt)
    settings = (0.1, 50, 0.0, None, "mean", (None, None), -1.0)
    with pytest.raises(RuntimeError, match="setup_context"):
        direct(x, y, cost[None], settings, [])


def test_direct_apply_refuses_a_function_with_setup_context():
    class WithSetup(torch.autograd.Function):
        @staticmethod
        def forward(x):
            return x

        @staticmethod
        def setup_context(ctx, inputs, output):
            pass

    with pytest.raises(TypeError, match="defines setup_context"):
        direct_apply(WithSetup)


def test_settings_are_checked_again_whenever_assigned():
    """A reassigned setting is checked on the next call, also one equal to the checked value
    (True == 1, but True is no eps)."""
    ps, pt, cost = _problem()
    loss = OTLoss(cost, eps=1, max_iter=50)
    want = loss(ps, pt)
    loss.eps = True
    with pytest.raises(TypeError, match="eps must be a float"):
        loss(ps, pt)
    loss.eps, loss.tol = 1, -1.0
    with pytest.raises(ValueError, match="tol must be a finite number >= 0"):
        loss(ps, pt)
    loss.tol = 1e-6
    assert torch.equal(loss(ps, pt), want)


def test_fast_path_warns_once_when_problems_stop_unconverged():
    ps, pt, cost = _problem()
    loss = OTLoss(cost, eps=0.2, max_iter=2, tol=1e-12)
    assert loss._fast(ps, pt) is not None
    with pytest.warns(RuntimeWarning, match=r"5 of 5 Sinkhorn problems did not converge"):
        loss(ps, pt)
    assert not bool(loss.last_result.converged.any())


def test_bound_kernel_call_equals_the_call():
    """``block.bound``: the same kernel call, prepared once; calling it again refills the same
    outputs with the same values as ``block.run``'s (the deferred objective's slot 7 once
    computed)."""
    ps, pt, cost = _problem()
    kernel, outs = block.bound(ps, pt, cost[None], 0.2, 30, 0.0)
    want, grads = block.run(ps, pt, cost[None], 0.2, 30, 0.0)
    solved = block.solve(ps, pt, cost[None], 0.2, 30, 0.0, values=True)
    assert torch.equal(block.objective(want, 0.2), solved[7])
    assert torch.equal(grads.tensor(0), solved[8]) and torch.equal(grads.tensor(1), solved[9])
    for _ in range(2):
        kernel()
        assert torch.equal(block.objective(outs, 0.2), want.tensor(7))
        for i in range(12):
            assert torch.equal(outs.tensor(i), want.tensor(i))
        for i in range(2):
            assert torch.equal(kernel.grads.tensor(i), grads.tensor(i))


@pytest.mark.parametrize("read", [False, True])
def test_module_saves_with_its_last_result(read):
    """torch.save takes the module after a fast forward, last_result read or not (no storage
    is viewed as two dtypes), and the copy's last_result equals the original's."""
    ps, pt, cost = _problem()
    loss = OTLoss(cost, eps=0.2, tol=1e-6)
    (x,) = _leaves(ps)
    loss(x, pt)
    if read:
        assert loss.last_result is not None
    buffer = io.BytesIO()
    torch.save(loss, buffer)
    buffer.seek(0)
    copy = torch.load(buffer, weights_only=False)
    for got, want in zip(copy.last_result, loss.last_result, strict=True):
        assert (got is None and want is None) or torch.equal(got, want)

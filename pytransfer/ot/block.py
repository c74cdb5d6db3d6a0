"""The blocked scaling-form kernel (issue 13): one C++ call per solve for a shared cost.

``csrc/sinkhorn_block_cpu.cpp`` iterates u = a / (K v), v = b / (K^T u) for blocks of 16
(float32) / 8 (float64) problems per load of K, with per-problem exit and absorption into the
log domain (the iterates, stopping rule and outputs of ``pytransfer.ot.scaling``), and returns
the values <P, C> and <P, C> + eps KL(P || a b^T) as by-products. A problem whose v repeats
bit for bit has reached an exact floating-point fixed point, which every further iteration
reproduces: it stops there with the outputs of running on (n_iter included). In float32 at
eps = 0.1 (B = 128, 78 x 22) three quarters of the problems get there, in about 40
iterations; the rest drift on by an ulp per iteration along the scale invariance
(u c, v / c), never repeat (no cycle either) and run all of them, so ``tol=0, max_iter=100``
(a fixed iteration count) costs about 55 of the 100. Once no problem is left to load and at
most half of a block's lanes are live, the block hands them to one of half the width, down to
16-byte vectors (each halving halves the cost per iteration on a 256-bit FPU such as Zen 4's:
-0.9 % at B = 128, 78 x 22, 1 thread); the FMAs are written out, so a problem's bits do not
depend on the width, nor on the problems beside it.

It is the CPU backend of the scaling op (``_ops.sinkhorn_scaling_cpu``), and
``pytransfer::sinkhorn_dual_cpu`` is the whole ``grad="dual"`` forward in one op, whose
backward is JTLN eq. 11: the centred potentials, returned by the forward. Eager callers that
read few of the outputs (``OTLoss``) take :func:`run` (the outputs in one allocation, read
as views) and :func:`transport_cost` (the reduced value in one autograd node); :func:`bound`
is the kernel call alone, for the benchmark of the Python around it (issue 13, per-call
overhead).

Cost model (CPU, measured 1 thread, fp32, 20-100 iterations): the block kernel beats the
batched GEMM loop at every B for K of up to 1716 elements (78 x 22: 2.5-3.2x at B = 256-4096)
and for B >= 16 at 256 x 256 to 2048 x 512 (1.2-3.7x); it loses where most lanes idle on a
large K (B = 1 at 1024 x 1024: 0.21x; B = 4: 0.81x; B = 1 at 256 x 256: 0.66x), where the
GEMM loop's ~20 us of Python per iteration no longer matters (measured before the fixed-point
stop and the fused division, which only speed up the block kernel). Hence ``use_gemm_loop``:
the GEMM loop when K has >= ``GEMM_MIN_ELEMENTS`` entries and either at most a quarter of the
lanes would be used or the blocks are fewer than the threads (so the threads would idle).
"""

from __future__ import annotations

import functools

import torch

from pytransfer import _ext
from pytransfer._autograd import direct_apply
from pytransfer.ot import implicit, scaling
from pytransfer.ot.reference import plan_from_potentials

#: problems per load of K (one 64-byte SIMD vector of scalings)
LANES = {torch.float32: 16, torch.float64: 8}
#: below this many entries of K the GEMM loop's per-iteration Python cost dominates
GEMM_MIN_ELEMENTS = 1 << 16


def use_gemm_loop(B: int, n: int, m: int, dtype: torch.dtype, threads: int) -> bool:
    """Whether the batched GEMM loop is expected to beat the block kernel (see the module
    doc for the measurements)."""
    if n * m < GEMM_MIN_ELEMENTS:
        return False
    lanes = LANES[dtype]
    return 4 * B <= lanes or -(-B // lanes) < threads


def check(a, b, cost, rtol):
    """One pass of the value checks over contiguous CPU float32/float64 a, b, cost: (all valid,
    max C - min C, max |C|). ``sinkhorn`` re-runs its torch checks for their messages when not
    valid."""
    B, n = a.shape
    m = b.shape[1]
    return _ext.call("sinkhorn_check", a.dtype, _ext.src(a, B, n), _ext.src(b, B, m),
                     _ext.src(cost, *cost.shape), B, n, m, cost.numel(), rtol, threads=False)


@functools.lru_cache(maxsize=64)
def _layout(dtype: torch.dtype, B: int, n: int, m: int) -> _ext.Layout:
    """The kernel's outputs but the dual gradients in one allocation, in its order: f, g,
    n_iter, err, absorbed, converged, transport, objective, then what a deferred objective is
    computed from (:func:`objective`): P's row sums, column sums, copies of a and b."""
    return _ext.Layout((dtype, (B, n)), (dtype, (B, m)), (torch.int64, (B,)), (dtype, (B,)),
                       (torch.bool, (B,)), (torch.bool, (B,)), (dtype, (B,)), (dtype, (B,)),
                       (dtype, (B, n)), (dtype, (B, m)), (dtype, (B, n)), (dtype, (B, m)))


@functools.lru_cache(maxsize=64)
def _grad_layout(dtype: torch.dtype, B: int, n: int, m: int) -> _ext.Layout:
    """The dual gradients, f and g centred, in an allocation of their own (the backward
    holds them; the rest may be written over by the next call, :func:`run`)."""
    return _ext.Layout((dtype, (B, n)), (dtype, (B, m)))


def _call(a, b, cost, eps, max_iter, tol, g_init, outs, call=None, fixed_stop=True,
          check_rtol=-1.0):
    """The kernel call (``call``: ``_ext.call`` by default, or ``_ext.bound``): ``outs`` its
    outputs, an ``_ext.Outputs`` (objective deferred) or ``_ext`` buffers; ``fixed_stop``:
    see :func:`solve`. ``check_rtol`` >= 0: the call first runs :func:`check`'s checks of a
    and b (mass tolerance ``check_rtol``) and returns False, having written nothing, if one
    fails; else True."""
    (B, n), m, dtype = a.shape, b.shape[1], a.dtype
    lo, hi = scaling.SAFE_RANGE[dtype]
    return (call or _ext.call)(
        "sinkhorn_block", dtype, _ext.src(a, B, n), _ext.src(b, B, m), _ext.src(cost, 1, n, m),
        B, n, m, eps, max_iter, tol, lo, hi, _ext.src(g_init, B, m), fixed_stop, check_rtol,
        *outs, threads=max(1, min(torch.get_num_threads(), -(-B // LANES[dtype]))))


def _outputs(dtype, B, n, m, into=(None, None)) -> tuple[_ext.Outputs, _ext.Outputs]:
    """:func:`run`'s two allocations, :func:`_layout`'s and :func:`_grad_layout`'s: ``into``'s
    where given with the same layout, else new."""
    layout, grad_layout = _layout(dtype, B, n, m), _grad_layout(dtype, B, n, m)
    outs, grads = into
    if outs is None or outs.layout is not layout:
        outs = _ext.Outputs(layout)
    if grads is None or grads.layout is not grad_layout:
        grads = _ext.Outputs(grad_layout)
    return outs, grads


def run(a, b, cost, eps, max_iter, tol, g_init=None, into=(None, None),
        check_rtol=-1.0) -> tuple[_ext.Outputs, _ext.Outputs] | None:
    """:func:`solve` with ``values``: (its outputs in one allocation, ``_ext.Outputs`` with
    the slots of :func:`_layout`, the dual gradients in another, :func:`_grad_layout`'s), so
    an eager caller reads only those it needs (views of one allocation: not for a custom op's
    returns, which may not alias each other). The objective (slot 7) is deferred:
    :func:`objective` computes it, bit for bit as :func:`solve` does, from what the kernel
    kept (a training step that never reads it skips its logs). ``into``: an earlier call's
    two allocations (or None for either) that nothing reads any more, written over instead of
    new ones where their layouts match (the kernel writes every slot but the deferred
    objective's). ``check_rtol`` >= 0: None if a or b fails :func:`check`'s checks (see
    :func:`_call`)."""
    outs, grads = _outputs(a.dtype, a.shape[0], a.shape[1], b.shape[1], into)
    ok = _call(a, b, cost, eps, max_iter, tol, g_init, (outs, grads), check_rtol=check_rtol)
    return (outs, grads) if ok else None


def objective(outs: _ext.Outputs, eps: float) -> torch.Tensor:
    """Slot 7 of :func:`run`'s outputs, the objectives, computed into it from slots 0, 1 and
    8-11 (``eps``: the solve's)."""
    (B, n), m = outs.layout.slots[0][1], outs.layout.slots[1][1][1]
    src = _ext.src
    _ext.call("sinkhorn_block_objective", outs.layout.dtype,
              *(src(outs.tensor(i), B, k) for i, k in ((10, n), (11, m), (0, n), (1, m),
                                                       (8, n), (9, m))),
              B, n, m, eps, _ext.dst(outs.tensor(7), B), threads=False)
    return outs.tensor(7)


def bound(a, b, cost, eps, max_iter, tol):
    """(:func:`run`'s kernel call prepared once, arguments checked and bound: calling it runs
    the C++ kernel alone, the floor under every wrapper; its outputs, ``_ext.Outputs``, the
    first allocation of :func:`run`'s). The caller keeps a, b and cost alive."""
    outs, grads = _outputs(a.dtype, a.shape[0], a.shape[1], b.shape[1])
    kernel = _call(a, b, cost, eps, max_iter, tol, None, (outs, grads), _ext.bound)
    kernel.grads = grads  # (the memory its pointers point into)
    return kernel, outs


def solve(a, b, cost, eps, max_iter, tol, values=False, g_init=None, *, fixed_stop=True):
    """(f, g, n_iter, err, absorbed, converged, transport, objective, f centred, g centred) of
    the C++ kernel for contiguous float32/float64 a (B, n), b (B, m), cost (1, n, m); the
    last four only with ``values`` (else None); ``absorbed`` marks problems that finished in
    the log domain (or started there: a warm start ``g_init`` (B, m) outside the scalings'
    range). ``fixed_stop=False`` computes every iteration even past an exact fixed point
    (the outputs are the same bit for bit; for tests and the benchmark)."""
    (B, n), m, dtype = a.shape, b.shape[1], a.dtype
    none = _ext.src(None)  # an optional output not asked for: a null pointer
    outs = (_ext.out(dtype, B, n), _ext.out(dtype, B, m), _ext.out(torch.int64, B),
            _ext.out(dtype, B), _ext.out(torch.bool, B), _ext.out(torch.bool, B))
    extra = ((_ext.out(dtype, B), _ext.out(dtype, B), _ext.out(dtype, B, n),
              _ext.out(dtype, B, m)) if values else (none,) * 4)
    _call(a, b, cost, eps, max_iter, tol, g_init, outs + extra[:2] + (none,) * 4 + extra[2:],
          fixed_stop=fixed_stop)
    f, g, n_iter, err, absorbed, converged = (x.tensor for x in outs)
    transport, objective, fc, gc = (x.tensor for x in extra)
    return f, g, n_iter, err, absorbed, converged, transport, objective, fc, gc


def _dual_forward(a, b, cost, eps, max_iter, tol, g_init=None):
    a, b, cost = a.contiguous(), b.contiguous(), cost.contiguous()
    f, g, n_iter, err, _, converged, transport, objective, fc, gc = solve(
        a, b, cost, eps, max_iter, tol, True, g_init)
    return transport, objective, f, g, n_iter, err, converged, fc, gc


@torch.library.custom_op("pytransfer::sinkhorn_dual_cpu", mutates_args=())
def sinkhorn_dual_cpu(
    a: torch.Tensor, b: torch.Tensor, cost: torch.Tensor, eps: float, max_iter: int, tol: float,
    g_init: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
           torch.Tensor, torch.Tensor, torch.Tensor]:
    """(transport_cost, objective, f, g, n_iter, err, converged, f centred, g centred) for a
    shared cost (1, n, m): the whole ``grad="dual"`` forward in one C++ call; differentiable
    in the values only (JTLN eq. 11; the potentials are constants). ``g_init``: warm start."""
    return _dual_forward(a, b, cost, eps, max_iter, tol, g_init)


@sinkhorn_dual_cpu.register_fake
def _(a, b, cost, eps, max_iter, tol, g_init=None):
    B = a.shape[0]
    return (a.new_empty((B,)), a.new_empty((B,)), torch.empty_like(a), torch.empty_like(b),
            a.new_empty((B,), dtype=torch.int64), a.new_empty((B,)),
            a.new_empty((B,), dtype=torch.bool), torch.empty_like(a), torch.empty_like(b))


def _setup_context(ctx, inputs, output):
    a, b, cost, eps, *_ = inputs
    ctx.mark_non_differentiable(*output[2:])
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(a, b, cost, output[2], output[3], output[7], output[8])
    ctx.eps = eps


def _backward(ctx, grad_transport, grad_objective, *_):
    """d<P,C>/da = f centred (eq. 11), /db = g centred, /dC = P; the objective's envelope
    gradient (f - eps log a centred, ..., P) when it is used."""
    a, b, cost, f, g, fc, gc = ctx.saved_tensors
    need_a, need_b, need_C = ctx.needs_input_grad[:3]
    grad_a = grad_b = grad_C = None
    wt = grad_transport[:, None] if grad_transport is not None else None
    if need_a and wt is not None:
        grad_a = wt * fc
    if need_b and wt is not None:
        grad_b = wt * gc
    w_plan = wt
    if grad_objective is not None:
        wo = grad_objective[:, None]
        ga_o, gb_o, _ = implicit.objective_vjp(a, b, f, g, None, ctx.eps)
        grad_a = (wo * ga_o if grad_a is None else grad_a + wo * ga_o) if need_a else None
        grad_b = (wo * gb_o if grad_b is None else grad_b + wo * gb_o) if need_b else None
        w_plan = wo if w_plan is None else w_plan + wo
    if need_C and w_plan is not None:
        plan = plan_from_potentials(a, b, cost, f, g, ctx.eps)
        grad_C = (w_plan[:, :, None] * plan).sum(0, keepdim=True)
    return grad_a, grad_b, grad_C, None, None, None, None


sinkhorn_dual_cpu.register_autograd(_backward, setup_context=_setup_context)


class _Dual(torch.autograd.Function):
    """The op's forward and gradient rule without the dispatcher round trip (eager mode).
    Only the two values are outputs of the Function (each output costs autograd work); the
    rest of the op's outputs come back through ``out``."""

    @staticmethod
    def forward(ctx, a, b, cost, eps, max_iter, tol, g_init, out):
        out.extend(_dual_forward(a, b, cost, eps, max_iter, tol, g_init))
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(a, b, cost, out[2], out[3], out[7], out[8])
        ctx.eps = eps
        return out[0], out[1]

    @staticmethod
    def backward(ctx, grad_transport, grad_objective):
        return (*_backward(ctx, grad_transport, grad_objective), None)


class _Rejected(Exception):
    """A kernel call's value checks failed (``check_rtol``): nothing was solved."""


class _DualTransport(torch.autograd.Function):
    """:class:`_Dual` when only ``transport_cost`` carries gradient (``OTLoss``), reduced
    ("mean", "sum" or "none"): one output, no separate reduction node. The settings come as
    one tuple (eps, max_iter, tol, g_init, reduction, into, check_rtol); the kernel's outputs
    come back through ``out`` (:func:`run`); a rejected call raises :class:`_Rejected`. The
    backward reads the centred potentials from their own allocation, which ``ctx`` keeps
    (and, for the plan when the cost needs a gradient, the potentials from the other, which
    ``ctx`` then keeps too; else the next call may write over it while this graph lives),
    not as saved tensors: a caller's in-place change of another view of them (say
    ``last_result.f``) cannot trip the saved-version check."""

    @staticmethod
    def forward(ctx, a, b, cost, settings, out):
        eps, max_iter, tol, g_init, reduction, into, check_rtol = settings
        res = run(a, b, cost, eps, max_iter, tol, g_init, into, check_rtol)
        if res is None:
            raise _Rejected
        outs, ctx.grads = res
        out.extend(res)
        ctx.set_materialize_grads(False)
        ctx.eps, ctx.reduction, ctx.batch = eps, reduction, a.shape[0]
        if ctx.needs_input_grad[2]:
            ctx.outs = outs
            ctx.save_for_backward(a, b, cost)
        # "none": a copy (an output that is a view made here may not be changed in place)
        return _reduce(outs.view(6), reduction, copy=True)

    @staticmethod
    def backward(ctx, grad):
        if grad is None:
            return None, None, None, None, None
        grads, reduction = ctx.grads, ctx.reduction
        need_a, need_b, need_C = ctx.needs_input_grad[:3]
        # each problem's weight as the reduction's backward passes it, bit for bit (x / 1 = x)
        if reduction == "none":
            w = grad[:, None]
        else:
            w = grad / ctx.batch if reduction == "mean" and ctx.batch > 1 else grad
        grad_C = None
        if need_C:
            plan = plan_from_potentials(*ctx.saved_tensors, ctx.outs.tensor(0),
                                        ctx.outs.tensor(1), ctx.eps)
            grad_C = ((w[:, :, None] if reduction == "none" else w) * plan).sum(0, keepdim=True)
        return (w * grads.view(0) if need_a else None, w * grads.view(1) if need_b else None,
                grad_C, None, None)


_apply_transport = direct_apply(_DualTransport)


def _reduce(values: torch.Tensor, reduction: str, copy: bool = False) -> torch.Tensor:
    """values.mean(), .sum() or, "none", the values (a copy with ``copy``)."""
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values.clone() if copy else values


def transport_cost(a, b, cost, eps, max_iter, tol, reduction="none", g_init=None,
                   into=(None, None), check_rtol=-1.0):
    """(the transport costs <P, C> reduced by ``reduction``, with JTLN eq. 11's gradient when
    an input requires one; the kernel's two allocations of outputs, :func:`run`'s, written
    over ``into``'s where given), eager; (None, None, None) if ``check_rtol`` >= 0 and a or b
    fails :func:`check`'s checks."""
    if a.requires_grad or b.requires_grad or cost.requires_grad:
        out = []
        settings = (eps, max_iter, tol, g_init, reduction, into, check_rtol)
        try:
            value = _apply_transport(a, b, cost, settings, out)
        except _Rejected:
            return None, None, None
        return value, *out
    res = run(a, b, cost, eps, max_iter, tol, g_init, into, check_rtol)
    if res is None:
        return None, None, None
    # "none": a copy, as with gradient (a view would change when the outputs are written over)
    return _reduce(res[0].view(6), reduction, copy=True), *res


def sinkhorn_dual(a, b, cost, eps, max_iter, tol, g_init=None, objective_grad=True):
    """``sinkhorn_dual_cpu``; eager calls skip the custom-op dispatch (tens of us per call),
    traced ones (torch.compile) use the op. ``g_init``: warm start. ``objective_grad=False``:
    the objective is returned without gradient (cheaper autograd bookkeeping)."""
    if torch.compiler.is_compiling():
        return sinkhorn_dual_cpu(a, b, cost, eps, max_iter, tol, g_init)
    if not (a.requires_grad or b.requires_grad or cost.requires_grad):
        return _dual_forward(a, b, cost, eps, max_iter, tol, g_init)
    if not objective_grad:
        transport, outs, grads = transport_cost(a, b, cost, eps, max_iter, tol, "none", g_init)
        return (transport, objective(outs, eps), *(outs.tensor(i) for i in (0, 1, 2, 3, 5)),
                grads.tensor(0), grads.tensor(1))
    out = []
    out[:2] = _Dual.apply(a, b, cost, eps, max_iter, tol, g_init, out)
    return tuple(out)

"""``pytransfer.ot.sinkhorn``: batched entropic OT between small histograms.

The JTLN loss (Lu et al., eq. 7-11) is ``transport_cost`` of this solver between the source
and target classifier outputs, with the paper's lambda = 1/eps.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from pytransfer import _checks, _dispatch, _ext
from pytransfer.ot import _ops, block
from pytransfer.ot.reference import plan_from_potentials, values_from_plan
from pytransfer.ot.scaling import AUTO_RANGE, MAX_RANGE, scaling_range

GRADS = ("dual", "implicit", "unrolled")
METHODS = ("auto", "log", "scaling")
MASS_RTOL = 1e-5
#: the mass check's relative tolerance per dtype (half inputs: their rounding)
_MASS_RTOL = {d: max(MASS_RTOL, 4 * torch.finfo(d).eps)
              for d in (torch.float64, torch.float32, torch.float16, torch.bfloat16)}


class SinkhornResult(NamedTuple):
    """Per-problem results (leading batch dimension dropped for a single 1-D problem).

    transport_cost: <plan, C> (POT's ``sinkhorn2`` value; JTLN's l_ot).
    objective: <plan, C> + eps * KL(plan || a b^T), generalised KL.
    f, g: potentials in cost units, plan_ij = exp((f_i + g_j - C_ij) / eps); zero-mass
        entries hold the finite c-transform value.
    n_iter: full iterations run; marginal_error: ||plan 1 - a||_1 of the returned state;
    converged: marginal_error <= tol * mass; plan: only with ``return_plan=True``.
    """

    transport_cost: torch.Tensor
    objective: torch.Tensor
    f: torch.Tensor
    g: torch.Tensor
    n_iter: torch.Tensor
    marginal_error: torch.Tensor
    converged: torch.Tensor
    plan: torch.Tensor | None = None


def _validate(a, b, cost, eps, max_iter, tol, grad, method, check_inputs):
    # the usual case in three comparisons; the _checks functions name what is wrong
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
            and isinstance(cost, torch.Tensor) and a.dtype == b.dtype == cost.dtype
            and a.dtype in _checks.FLOAT_DTYPES and a.device == b.device == cost.device):
        for name, x in (("a", a), ("b", b), ("cost", cost)):
            _checks.floating(name, x)
        _checks.same_device(a=a, b=b, cost=cost)
        _checks.same_dtype(a=a, b=b, cost=cost)
    device = a.device
    _checks.positive_float("eps", eps)
    _checks.positive_int("max_iter", max_iter)
    _checks.nonneg_float("tol", tol)
    _checks.choice("grad", grad, GRADS)
    _checks.choice("method", method, METHODS)
    _checks.ndim("a", a, (1, 2))
    _checks.ndim("b", b, (a.dim(),))
    _checks.ndim("cost", cost, (2, 3))
    if a.dim() == 1 and cost.dim() == 3:
        raise ValueError("cost must be 2-D (n, m) for a single problem (1-D a and b)")
    if a.dim() == 2 and a.shape[0] != b.shape[0]:
        raise ValueError(
            f"a and b must have the same batch size, got {a.shape[0]} and {b.shape[0]}")
    n, m = a.shape[-1], b.shape[-1]
    if n == 0 or m == 0:
        raise ValueError(f"a and b must be non-empty, got n={n}, m={m}")
    if tuple(cost.shape[-2:]) != (n, m):
        raise ValueError(f"cost must end in (n, m) = ({n}, {m}), got shape {tuple(cost.shape)}")
    if cost.dim() == 3 and cost.shape[0] != a.shape[0]:
        raise ValueError(
            f"cost batch {cost.shape[0]} must equal the batch of a and b ({a.shape[0]})")
    if a.dim() == 2 and a.shape[0] == 0:
        raise ValueError("a and b hold no problems (batch size 0)")
    span, max_abs = _check_values(a, b, cost) if check_inputs else (None, None)
    _checks.entropic_scale(eps, cost, check_inputs, max_abs)
    return device, span


def _validate_init(init, a, b) -> torch.Tensor:
    """g of a warm start ``init = (f, g)``, (B, m) or (m,), detached (see ``sinkhorn``)."""
    if not (isinstance(init, tuple | list) and len(init) == 2):
        raise TypeError(f"init must be a pair (f, g) of potentials, got {type(init).__name__}")
    for name, x, w in (("init[0] (f)", init[0], a), ("init[1] (g)", init[1], b)):
        _checks.floating(name, x)
        if x.dtype != w.dtype or x.device != w.device:
            raise TypeError(f"{name} must have the dtype and device of a and b ({w.dtype}, "
                            f"{w.device}), got {x.dtype} on {x.device}")
        if tuple(x.shape) not in (tuple(w.shape), tuple(w.shape[-1:])):
            raise ValueError(f"{name} must have shape {tuple(w.shape)} or {tuple(w.shape[-1:])}, "
                             f"got {tuple(x.shape)}")
        _checks.finite(name, x)
    return init[1].detach()


def _check_values(a, b, cost) -> tuple[float | None, float | None]:
    """NaN/Inf, signs and masses (host sync); returns (max C - min C, max |C|), None for max
    |C| where it did not come for free. CPU float32/float64 contiguous inputs take one C++ pass
    (no copy), which gives both (for the method choice and the eps check); the torch checks
    below run only where it is not available or finds a problem (for the message)."""
    rtol = _MASS_RTOL[a.dtype]
    if (a.device.type == "cpu" and a.dtype in block.LANES and _ext.unavailable() is None
            and not torch.compiler.is_compiling() and a.is_contiguous() and b.is_contiguous()
            and cost.is_contiguous()):
        ok, span, max_abs = block.check(a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1]),
                                        cost, rtol)
        if ok:
            return span, max_abs
    for name, x in (("a", a), ("b", b)):
        _checks.finite(name, x)
    span = _check_cost(a, b, cost)
    _checks.nonnegative("a", a)
    _checks.nonnegative("b", b)
    ma, mb = a.sum(-1), b.sum(-1)
    if bool((ma <= 0).any()):
        raise ValueError("a has a problem with zero total mass (all-zero weights)")
    if bool((mb <= 0).any()):
        raise ValueError("b has a problem with zero total mass (all-zero weights)")
    gap = ((ma.double() - mb.double()).abs() / torch.maximum(ma, mb).double()).max()
    if bool(gap > rtol):
        raise ValueError(
            f"a and b must have equal total mass per problem (relative gap {float(gap):.2e} "
            f"> {rtol:.0e}); normalise them or use unbalanced OT"
        )
    return span, None


def _check_cost(a, b, cost) -> float | None:
    """NaN and -inf are rejected; +inf marks forbidden pairs (never matched). A row (column)
    whose every entry on b's (a's) support is +inf can never be matched: ValueError naming it.
    Returns max C - min C over the finite entries when the cost holds +inf, else None."""
    c = cost.detach()
    if bool(torch.isfinite(c.sum())) or bool(torch.isfinite(c).all()):
        return None
    if bool(torch.isnan(c).any()):
        raise ValueError("cost contains NaN")
    if bool((c == float("-inf")).any()):
        raise ValueError("cost contains -inf (only +inf, a forbidden pair, is allowed)")
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])  # a single problem: B = 1
    forbidden = torch.isinf(c).expand(a.shape[0], -1, -1)
    for axis, name, other in ((2, "row", b), (1, "column", a)):
        dead = (forbidden | (other <= 0).unsqueeze(3 - axis)).all(axis)
        if bool(dead.any()):
            p, i = (int(x) for x in dead.nonzero()[0])
            raise ValueError(
                f"cost {name} {i} of problem {p} is +inf on every entry where the other "
                f"marginal has mass: that {name} can never be matched")
    finite = c[~torch.isinf(c)]
    return float(finite.max() - finite.min())


def _choose_method(method: str, shared: bool, grad: str, cost: torch.Tensor,
                   eps: float, cost_span: float | None) -> tuple[str, bool]:
    """(method, factorized): whether the values may be computed without forming the plan.
    ``cost_span``: max C - min C when the value checks already computed it."""
    def exponent_range():
        return scaling_range(cost, eps) if cost_span is None else cost_span / eps

    if method == "scaling":
        if not shared:
            raise ValueError("method='scaling' needs a shared (n, m) cost; got a batched cost")
        if grad == "unrolled":
            raise ValueError("grad='unrolled' differentiates the log-domain loop: use method='log'")
        span = exponent_range()
        if span > MAX_RANGE[cost.dtype]:
            raise ValueError(
                f"method='scaling': (max C - min C)/eps = {span:.4g} exceeds "
                f"{MAX_RANGE[cost.dtype]:g}, where exp(-C/eps) underflows in {cost.dtype}; "
                "use method='log' (or 'auto')")
        return method, span <= AUTO_RANGE[cost.dtype]
    if method == "log" or not shared or grad == "unrolled" or torch.compiler.is_compiling():
        return "log", False  # under torch.compile "auto" avoids the host sync of the range
    fits = exponent_range() <= AUTO_RANGE[cost.dtype]
    return ("scaling", True) if fits else ("log", False)


def sinkhorn(
    a: torch.Tensor,
    b: torch.Tensor,
    cost: torch.Tensor,
    eps: float,
    *,
    max_iter: int = 1000,
    tol: float = 1e-6,
    grad: str = "dual",
    method: str = "auto",
    backend: str = "auto",
    return_plan: bool = False,
    check_inputs: bool = True,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> SinkhornResult:
    """Solve B entropic OT problems min_P <P, C> + eps KL(P || a b^T), P 1 = a, P^T 1 = b.

    Args:
        a: (B, n) or (n,) non-negative weights; b: (B, m) or (m,), same mass per problem.
            Zero-mass entries (padding of ragged problems) are allowed.
        cost: (n, m) shared by all problems, or (B, n, m).
        eps: entropic regularisation (> 0, in cost units; JTLN's lambda = 1/eps).
        max_iter: iteration cap; tol: a problem stops when ||P 1 - a||_1 <= tol * mass
            (tol=0 runs exactly max_iter iterations).
        grad: gradient rule for backward: ``"dual"`` (JTLN eq. 11: d/da = f - mean f,
            d/db = g - mean g, d/dC = plan for ``transport_cost``; the exact envelope gradient
            for ``objective``), ``"implicit"`` (exact gradient of both values at the fixed
            point), ``"unrolled"`` (autograd through the loop, reference backend only).
        method: ``"log"`` (log-domain iterations), ``"scaling"`` (two products per iteration
            with a shared K = exp(-C/eps), absorption-stabilised; shared cost only) or
            ``"auto"``: scaling when the cost is shared, grad is not "unrolled" and
            (max C - min C)/eps <= 50 (float32) / 500 (float64), else log. Both give the same
            iterates. On CPU the scaling form runs the C++ block kernel (16 float32 / 8 float64
            problems per load of K, one call per solve; with grad="dual" it also returns the
            values and the dual gradients), except where K has >= 65536 entries and at most a
            quarter of one block's lanes, or fewer blocks than threads, would be busy: there the
            batched GEMM loop (``pytransfer.ot.block.use_gemm_loop``; README, Sinkhorn).
        backend: ``"auto" | "reference" | "cpu" | "triton" | "cuda"``.
        return_plan: also return the (B, n, m) plan, differentiable w.r.t. a, b and cost on
            every backend: autograd through the loop with "unrolled", else the implicit rule at
            the fixed point (whatever ``grad`` says for the values).
        check_inputs: run value checks (NaN/-Inf, signs, masses, rows or columns that can
            never be matched; needs a host sync).
        init: warm start ``(f, g)``, potentials in cost units as returned in ``f``, ``g``
            ((B, n), (B, m), or (n,), (m,) for every problem; finite, a's dtype and device;
            POT's ``warmstart`` is ``(f / eps, g / eps)``). Iteration 1 computes f from g, so
            only g steers the solve (f is checked, not used). The log domain starts from g, the
            scaling form from v = exp(g/eps); a problem whose v lies outside the scalings'
            safe range (``scaling.SAFE_RANGE``) starts in the log domain from g instead (as an
            absorbed problem would). Every backend and method. No gradient flows into init.

    Forbidden pairs: +inf cost entries are never matched (plan 0 there, and 0 * inf counts as
    0 in the values and gradients). A row or column with every entry on the other side's
    support at +inf is rejected. NaN and -inf costs are rejected.

    Which marginal is exact after a truncated run: an iteration updates f (rows) and then g
    (columns), so after ``n_iter`` iterations the plan's column sums equal b exactly and
    ``marginal_error`` measures the rows. POT updates v then u, so its rows are exact: POT's
    plan after k iterations is the transpose of ours on the transposed problem (b, a, C^T).
    Converged results agree either way.

    Float16/bfloat16 inputs are upcast to float32. Gradients w.r.t. a and b are centered on the
    positive-mass entries (total mass is constrained, so they are defined up to a constant).
    """
    device, cost_span = _validate(a, b, cost, eps, max_iter, tol, grad, method, check_inputs)
    g_init = None if init is None else _validate_init(init, a, b)
    shared = cost.dim() == 2
    single = a.dim() == 1
    if single:
        a, b, cost = a[None], b[None], cost[None]
    elif shared:
        cost = cost[None]
    if a.dtype in (torch.float16, torch.bfloat16):
        a, b, cost = a.float(), b.float(), cost.float()
    eps = float(eps)
    method, factorized = _choose_method(method, shared, grad, cost, eps, cost_span)
    if g_init is not None:
        g_init = g_init.to(a.dtype).expand(a.shape[0], -1).contiguous()
    op = _ops.OP_SCALING if method == "scaling" else _ops.OP
    B, n, m = a.shape[0], a.shape[1], b.shape[1]
    name, solve = _dispatch.resolve(op, backend, device.type, n=n, m=m)
    converged = None
    warm = () if g_init is None else (g_init,)
    if (name == "cpu" and method == "scaling" and grad == "dual" and not return_plan
            and not block.use_gemm_loop(B, n, m, a.dtype, torch.get_num_threads())):
        # the block kernel: solve, values and dual gradients in one call
        transport, objective, f, g, n_iter, err, converged, _, _ = block.sinkhorn_dual(
            a, b, cost, eps, max_iter, tol, g_init)
        plan = None
    elif grad == "unrolled":
        if name != "reference":
            raise ValueError(
                f"grad='unrolled' differentiates through the iterations and needs "
                f"backend='reference', got backend {name!r}"
            )
        f, g, n_iter, err = solve(a, b, cost, eps, max_iter, tol, *warm)
        plan = plan_from_potentials(a, b, cost, f, g, eps)
        transport, objective = values_from_plan(a, b, cost, plan, f, g, eps)
    else:
        with torch.no_grad():
            f, g, n_iter, err = solve(a.detach(), b.detach(), cost.detach(), eps, max_iter, tol,
                                      *warm)
        transport, objective, plan = _ops.sinkhorn_values(a, b, cost, f, g, eps, grad,
                                                          factorized, return_plan)
    if converged is None:
        converged = err <= tol * a.detach().sum(-1)
    out = SinkhornResult(transport, objective, f, g, n_iter, err, converged,
                         plan if return_plan else None)
    if single:
        out = SinkhornResult(*(x[0] if x is not None else None for x in out))
    return out

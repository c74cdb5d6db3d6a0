"""``pytransfer.ot.sinkhorn_points``: entropic OT between point clouds without the n x m cost.

Large-problem OT for JTLN's "OT as cost metric" (Lu et al., "Optimal Transport for Deep Joint
Transfer Learning", eq. 15-16: ``class_pair_ot``) and the free-energy method's OT interpolation
of data sets (``sample_coupling``). Every log-sum-exp is a tiled pass whose cost tiles come from
a small GEMM; eps-scaling and the Sinkhorn divergence follow Feydy et al., "Interpolating
between Optimal Transport and MMD using Sinkhorn Divergences" (eq. 5 and section 3.2).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from pytransfer import _checks, _dispatch, _ext
from pytransfer.ot import points_reference as ref

OP = "sinkhorn_points"
#: ``cache=None`` keeps the cost tiles of one call in memory when they take at most this many
#: bytes (n m + m n values per problem, + n^2 + m^2 for the debiasing terms). Measured (1 thread,
#: d = 64, float32, the debiased workload of bench/bench_points.py): cached 2.5x faster than
#: online at n = m = 1024 (0.34 s vs 0.85 s) and 1.7x at 4096 (8.8 s vs 14.7 s): reading 4
#: bytes per entry beats its 2 d GEMM flops at every size that fits, so the budget only bounds
#: memory (512 MiB: n = m <= ~5800 debiased).
CACHE_BYTES = 1 << 29
SAMPLE_CHUNK = 1 << 20  # entries of a (draws x columns) score tile in sample_coupling


class PointSinkhornResult(NamedTuple):
    """Per-problem results (batch dimension dropped for a single (n, d) problem).

    objective: <P, C> + eps KL(P || a b^T) (with ``debias``: S_eps = OT(a, b) - OT(a, a)/2
        - OT(b, b)/2 of these objectives); differentiable in x, y, a and b (envelope theorem).
    transport_cost: <P, C> of the (a, b) plan, without gradient.
    f, g: potentials of the (a, b) problem in cost units, P_ij = exp((f_i + g_j - C_ij)/eps)
        (zero-mass entries hold the finite c-transform value).
    n_iter: iterations run (annealing stages included); marginal_error: ||P 1 - a||_1;
    converged: marginal_error <= tol * mass; eps_schedule: (S,) the eps of each stage.
    p, a, b: the cost exponent and weights, which ``sample_coupling`` needs.
    """

    objective: torch.Tensor
    transport_cost: torch.Tensor
    f: torch.Tensor
    g: torch.Tensor
    n_iter: torch.Tensor
    marginal_error: torch.Tensor
    converged: torch.Tensor
    eps_schedule: torch.Tensor
    p: int = 2
    a: torch.Tensor | None = None
    b: torch.Tensor | None = None


# ------------------------------------------------------------------ solvers (no autograd)

def _solve_fake(x, y, a, b, schedule, p, max_iter, tol, symmetric, cache):
    B = a.shape[0]
    return (a.new_empty(a.shape), b.new_empty(b.shape), a.new_empty((B,), dtype=torch.int64),
            a.new_empty((B,)))


@torch.library.custom_op("pytransfer::sinkhorn_points_cpu", mutates_args=())
def sinkhorn_points_cpu(
    x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, b: torch.Tensor, schedule: torch.Tensor,
    p: int, max_iter: int, tol: float, symmetric: bool, cache: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """C++ solver: (B, n, d), (B, m, d) clouds, (S,) float64 eps schedule."""
    B, n, d = x.shape
    m, S = y.shape[1], schedule.numel()
    f, g = torch.empty_like(a), torch.empty_like(b)
    n_iter, err = torch.empty(B, dtype=torch.int64), a.new_empty(B)
    _ext.call(
        "points_solve", x.dtype, _ext.src(x, B, n, d), _ext.src(y, B, m, d), _ext.src(a, B, n),
        _ext.src(b, B, m), B, n, m, d, p, symmetric,
        _ext.src(schedule.double(), S, dtype=torch.float64), S, max_iter, tol, cache,
        _ext.dst(f, B, n), _ext.dst(g, B, m), _ext.dst(n_iter, B, dtype=torch.int64),
        _ext.dst(err, B),
    )
    return f, g, n_iter, err


@torch.library.custom_op("pytransfer::sinkhorn_points_triton", mutates_args=())
def sinkhorn_points_triton(
    x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, b: torch.Tensor, schedule: torch.Tensor,
    p: int, max_iter: int, tol: float, symmetric: bool, cache: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton solver: the reference's iteration with every log-sum-exp an online tiled kernel."""
    from pytransfer.kernels.sinkhorn_points import lse_pass

    x, y, a, b = x.contiguous(), y.contiguous(), a.contiguous(), b.contiguous()

    def lse(h, eps, support, transpose):
        outer, inner = (y, x) if transpose else (x, y)
        return lse_pass(outer, inner, h, support, eps, p)

    return ref.solve(lse, a, b, schedule.tolist(), max_iter, tol, symmetric)


for _op in (sinkhorn_points_cpu, sinkhorn_points_triton):
    _op.register_fake(_solve_fake)


def sinkhorn_points_reference(x, y, a, b, schedule, p, max_iter, tol, symmetric, cache):
    return ref.sinkhorn_points_reference(x, y, a, b, schedule.tolist(), p, max_iter, tol,
                                         symmetric)


_dispatch.register_backends(OP, reference=sinkhorn_points_reference, cpu=sinkhorn_points_cpu,
                            triton=sinkhorn_points_triton)


# ------------------------------------------------------------------ values and gradients

@torch.library.custom_op("pytransfer::sinkhorn_points_rows", mutates_args=())
def sinkhorn_points_rows(
    x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, b: torch.Tensor, f: torch.Tensor,
    g: torch.Tensor, eps: float, p: int, backend: str, want_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(r, t, grad) per row, one tiled pass: r = P 1, t = (P o C) 1 and (``want_grad``, else a
    0-size tensor) grad_i = sum_j P_ij d/dx_i C_ij, the envelope gradient of the objective."""
    if backend == "cpu":
        B, n, d = x.shape
        m = y.shape[1]
        r, t = a.new_empty(B, n), a.new_empty(B, n)
        grad = x.new_empty(B, n, d) if want_grad else None
        _ext.call(
            "points_values", x.dtype, _ext.src(x, B, n, d), _ext.src(y, B, m, d),
            _ext.src(a, B, n), _ext.src(b, B, m), _ext.src(f, B, n), _ext.src(g, B, m), B, n,
            m, d, p, eps, _ext.dst(r, B, n), _ext.dst(t, B, n),
            _ext.src(None) if grad is None else _ext.dst(grad, B, n, d))
        if grad is None:
            grad = x.new_empty(0)
        return r, t, grad
    chunk = max(1, (1 << 22) // max(1, y.shape[1]))  # torch, tiled over rows (any device)
    rs, ts, gs = [], [], []
    for i0 in range(0, x.shape[1], chunk):
        xs = x[:, i0:i0 + chunk]
        cost = ref.point_cost(xs, y, p)
        P = ref.plan(cost, a[:, i0:i0 + chunk], b, f[:, i0:i0 + chunk], g, eps)
        rs.append(P.sum(-1))
        ts.append((P * cost).sum(-1))
        if want_grad:
            W = P if p == 2 else torch.where(cost > 0, P / torch.where(cost > 0, cost, 1), 0)
            gs.append(W.sum(-1, keepdim=True) * xs - W @ y)
    return torch.cat(rs, 1), torch.cat(ts, 1), torch.cat(gs, 1) if want_grad else x.new_empty(0)


@sinkhorn_points_rows.register_fake
def _(x, y, a, b, f, g, eps, p, backend, want_grad):
    return a.new_empty(a.shape), a.new_empty(a.shape), x.new_empty(x.shape if want_grad else 0)


def _alpha(w, pot, eps):
    """The multipliers pot - eps log w (the c-transform itself on zero-mass entries)."""
    sup = w > 0
    return torch.where(sup, pot - eps * torch.log(torch.where(sup, w, 1)), pot)


@torch.library.custom_op("pytransfer::sinkhorn_points_values", mutates_args=())
def sinkhorn_points_values(
    x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, b: torch.Tensor, f: torch.Tensor,
    g: torch.Tensor, eps: float, p: int, symmetric: bool, backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(transport_cost, objective) of the plan of converged potentials, one tiled pass.

    objective = <r, f - eps log a> + <c, g - eps log b> - eps sum(r) + eps |a| |b| (the
    generalised KL written with the marginals r = P 1 and c = P^T 1); c = b exactly after the
    solver's final g-update, and c = r for a symmetric problem.
    """
    r, t, _ = sinkhorn_points_rows(x, y, a, b, f, g, eps, p, backend, False)
    c = r if symmetric else torch.where(b > 0, b, 0)
    alpha = torch.where(a > 0, _alpha(a, f, eps), 0)
    beta = torch.where(b > 0, _alpha(b, g, eps), 0)
    objective = ((r * alpha).sum(-1) + (c * beta).sum(-1) - eps * r.sum(-1)
                 + eps * a.sum(-1) * b.sum(-1))
    return t.sum(-1), objective


@sinkhorn_points_values.register_fake
def _(x, y, a, b, f, g, eps, p, symmetric, backend):
    return a.new_empty(a.shape[:1]), a.new_empty(a.shape[:1])


def _values_setup(ctx, inputs, output):
    x, y, a, b, f, g, eps, p, _symmetric, backend = inputs
    ctx.save_for_backward(x, y, a, b, f, g)
    ctx.eps, ctx.p, ctx.backend = eps, p, backend


def _values_backward(ctx, grad_transport, grad_objective):
    """Envelope theorem: d objective = sum_ij P_ij dC_ij + <alpha, da> + <beta, db>."""
    x, y, a, b, f, g = ctx.saved_tensors
    need_x, need_y, need_a, need_b = ctx.needs_input_grad[:4]
    w = grad_objective[:, None]
    eps, p, backend = ctx.eps, ctx.p, ctx.backend
    gx = gy = ga = gb = None
    if need_x:
        gx = w[:, :, None] * sinkhorn_points_rows(x, y, a, b, f, g, eps, p, backend, True)[2]
    if need_y:
        gy = w[:, :, None] * sinkhorn_points_rows(y, x, b, a, g, f, eps, p, backend, True)[2]
    if need_a:
        ga = w * _center(_alpha(a, f, ctx.eps), a > 0)
    if need_b:
        gb = w * _center(_alpha(b, g, ctx.eps), b > 0)
    return gx, gy, ga, gb, None, None, None, None, None, None


def _center(v, support):
    return v - (v * support).sum(-1, keepdim=True) / support.sum(-1, keepdim=True)


sinkhorn_points_values.register_autograd(_values_backward, setup_context=_values_setup)


# ------------------------------------------------------------------ validation and API

def _validate(x, y, a, b, eps, p, max_iter, tol, eps_scaling, check_inputs):
    for name, t in (("x", x), ("y", y)):
        _checks.floating(name, t)
    device = _checks.same_device(x=x, y=y)
    _checks.same_dtype(x=x, y=y)
    _checks.ndim("x", x, (2, 3))
    _checks.ndim("y", y, (x.dim(),))
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(f"x and y must have the same feature dimension, got x {tuple(x.shape)} "
                         f"and y {tuple(y.shape)}")
    if x.shape[-1] == 0:
        raise ValueError("x and y must have at least one feature (d >= 1), got d=0")
    if x.dim() == 3 and x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same batch size, got {x.shape[0]} and "
                         f"{y.shape[0]}")
    n, m = x.shape[-2], y.shape[-2]
    if n == 0 or m == 0:
        raise ValueError(f"x and y must hold at least one point each, got n={n}, m={m}")
    _checks.positive_float("eps", eps)
    if isinstance(p, bool) or p not in (1, 2):
        raise ValueError(f"p must be 1 or 2, got {p!r}")
    _checks.positive_int("max_iter", max_iter)
    _checks.nonneg_float("tol", tol)
    if eps_scaling is not None:
        _checks.positive_float("eps_scaling", eps_scaling)
        if not 0 < eps_scaling < 1:
            raise ValueError(f"eps_scaling must lie in (0, 1), got {eps_scaling}")
    for name, w, want in (("a", a, x.shape[:-1]), ("b", b, y.shape[:-1])):
        if w is None:
            continue
        _checks.floating(name, w)
        if tuple(w.shape) != tuple(want):
            raise ValueError(f"{name} must have shape {tuple(want)}, got {tuple(w.shape)}")
    _checks.same_device(x=x, **{k: v for k, v in (("a", a), ("b", b)) if v is not None})
    _checks.same_dtype(x=x, **{k: v for k, v in (("a", a), ("b", b)) if v is not None})
    if check_inputs:
        _checks.finite("x", x)
        _checks.finite("y", y)
        for name, w in (("a", a), ("b", b)):
            if w is not None:
                _checks.finite(name, w)
                _checks.nonnegative(name, w)
        ma = a.sum(-1) if a is not None else torch.ones(())
        mb = b.sum(-1) if b is not None else torch.ones(())
        if bool((ma <= 0).any()):
            raise ValueError("a has a problem with zero total mass (all-zero weights)")
        if bool((mb <= 0).any()):
            raise ValueError("b has a problem with zero total mass (all-zero weights)")
        ma, mb = ma.double().cpu(), mb.double().cpu()
        gap = ((ma - mb).abs() / torch.maximum(ma, mb)).max()
        rtol = max(1e-5, 4 * torch.finfo(x.dtype).eps)
        if bool(gap > rtol):
            raise ValueError(
                f"a and b must have equal total mass per problem (relative gap {float(gap):.2e} "
                f"> {rtol:.0e}); normalise them or use unbalanced OT")
    return device


def _uniform(pts: torch.Tensor) -> torch.Tensor:
    return torch.full(pts.shape[:-1], 1 / pts.shape[-2], dtype=pts.dtype, device=pts.device)


def _use_cache(cache, name, B, n, m, itemsize, debias):
    if name != "cpu" or cache is False:
        return False
    if cache:
        return True
    pn, pm = -(-n // 16) * 16, -(-m // 16) * 16
    entries = 2 * pn * pm + (pn * pn + pm * pm if debias else 0)
    return B * entries * itemsize <= CACHE_BYTES


def _ot(x, y, a, b, schedule, p, max_iter, tol, symmetric, cache, name, solve):
    """(transport, objective, f, g, n_iter, err) of one (batched) problem."""
    with torch.no_grad():
        f, g, n_iter, err = solve(x.detach(), y.detach(), a.detach(), b.detach(), schedule, p,
                                  max_iter, tol, symmetric, cache)
    transport, objective = sinkhorn_points_values(x, y, a, b, f, g, float(schedule[-1]), p,
                                                  symmetric, name)
    return transport.detach(), objective, f, g, n_iter, err


def sinkhorn_points(
    x: torch.Tensor,
    y: torch.Tensor,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    *,
    eps: float,
    p: int = 2,
    max_iter: int = 1000,
    tol: float = 1e-6,
    eps_scaling: float | None = None,
    debias: bool = False,
    backend: str = "auto",
    cache: bool | None = None,
    check_inputs: bool = True,
) -> PointSinkhornResult:
    """Entropic OT between the clouds x (n, d) | (B, n, d) and y (m, d) | (B, m, d).

    Args:
        a, b: non-negative weights (n,) | (B, n) and (m,) | (B, m), equal mass per problem;
            default uniform. Zero weights pad ragged clouds.
        eps: entropic regularisation in cost units; cost |x - y|^2 / 2 (p=2) or |x - y| (p=1).
        max_iter: iterations at the final eps (annealing stages come on top); tol: stop once
            ||P 1 - a||_1 <= tol * mass (tol=0 runs every iteration).
        eps_scaling: GeomLoss's ``scaling`` in (0, 1): anneal from diameter^p to eps, the
            blur eps^(1/p) shrinking by this factor per iteration, warm-starting the
            potentials (``eps_schedule`` holds the schedule).
        debias: the Sinkhorn divergence S_eps = OT(a, b) - OT(a, a)/2 - OT(b, b)/2 (>= 0,
            0 for equal measures; the symmetric terms use GeomLoss's averaged update).
        backend: ``"auto" | "reference" | "cpu" | "triton"``.
        cache: keep the cost tiles in memory (C++ backend): None = when they fit
            :data:`CACHE_BYTES`, False = always online (O((n + m) d) memory), True = always.
        check_inputs: value checks (NaN/Inf, signs, masses; a host sync).
    """
    device = _validate(x, y, a, b, eps, p, max_iter, tol, eps_scaling, check_inputs)
    single = x.dim() == 2
    if single:
        x, y = x[None], y[None]
        a = None if a is None else a[None]
        b = None if b is None else b[None]
    a = _uniform(x) if a is None else a
    b = _uniform(y) if b is None else b
    if x.dtype in (torch.float16, torch.bfloat16):
        x, y, a, b = x.float(), y.float(), a.float(), b.float()
    eps = float(eps)
    schedule = ref.eps_schedule(x, y, eps, p, eps_scaling)
    sched_t = torch.tensor(schedule, dtype=torch.float64)
    B, n, m = x.shape[0], x.shape[1], y.shape[1]
    name, solve = _dispatch.resolve(OP, backend, device.type, n=n, m=m)
    use_cache = _use_cache(cache, name, B, n, m, x.element_size(), debias)
    xs, ys = ref.shift(x, y)
    args = (sched_t, p, max_iter, tol)
    transport, objective, f, g, n_iter, err = _ot(xs, ys, a, b, *args, False, use_cache, name,
                                                  solve)
    if debias:
        oa = _ot(xs, xs, a, a, *args, True, use_cache, name, solve)[1]
        ob = _ot(ys, ys, b, b, *args, True, use_cache, name, solve)[1]
        objective = objective - (oa + ob) / 2
    converged = err <= tol * a.detach().sum(-1)
    out = PointSinkhornResult(objective, transport, f, g, n_iter, err, converged, sched_t, p,
                              a.detach(), b.detach())
    if single:
        out = PointSinkhornResult(*(t[0] for t in out[:7]), sched_t, p, a[0].detach(),
                                  b[0].detach())
    return out


def self_ot(x: torch.Tensor, a: torch.Tensor, *, eps: float, p: int = 2, max_iter: int = 1000,
            tol: float = 1e-6, eps_scaling: float | None = None, backend: str = "auto",
            cache: bool | None = None) -> torch.Tensor:
    """Objective OT_eps(a, a) of batched clouds x (B, n, d) with themselves (the debiasing
    term), by GeomLoss's averaged symmetric update. Inputs are assumed validated."""
    schedule = torch.tensor(ref.eps_schedule(x, x, float(eps), p, eps_scaling),
                            dtype=torch.float64)
    name, solve = _dispatch.resolve(OP, backend, x.device.type, n=x.shape[1], m=x.shape[1])
    use_cache = _use_cache(cache, name, x.shape[0], x.shape[1], x.shape[1], x.element_size(),
                           False)
    xs, _ = ref.shift(x, x)
    return _ot(xs, xs, a, a, schedule, p, max_iter, tol, True, use_cache, name, solve)[1]

"""torch.library registrations of the Sinkhorn ops and their backends.

``pytransfer::sinkhorn_log_{cpu,triton}`` are the fixed-point solvers (no autograd: they
return potentials, which are constants for the gradient rules).
``pytransfer::sinkhorn_values`` turns potentials into (transport_cost, objective) and owns the
gradient rule (dual or implicit) through ``register_autograd``.
"""

from __future__ import annotations

import torch

from pytransfer import _checks, _dispatch, _ext
from pytransfer.ot import block, implicit, scaling
from pytransfer.ot.reference import (
    plan_from_potentials,
    sinkhorn_log_reference,
    values_factorized,
    values_from_plan,
)

OP = "sinkhorn"
OP_SCALING = "sinkhorn_scaling"
GRAD_MODES = ("dual", "implicit")
TRITON_MAX_TILE = 1 << 14  # padded n * m held by one Triton program
#: scaling form on CPU: beyond this many bytes of scalings the batched GEMM loop is never used
#: (the block kernel's lanes are full; see ``block.use_gemm_loop`` for the cost model)
PER_PROBLEM_BYTES = 4 << 20


def _solver_fake(a, b, cost, eps, max_iter, tol, g_init=None):
    B = a.shape[0]
    out = torch.float64 if a.dtype == torch.float64 else torch.float32
    return (
        a.new_empty(a.shape, dtype=out),
        b.new_empty(b.shape, dtype=out),
        a.new_empty((B,), dtype=torch.int64),
        a.new_empty((B,), dtype=out),
    )


def _outputs(a, b):
    B = a.shape[0]
    return (a.new_empty(a.shape), b.new_empty(b.shape),
            torch.empty(B, dtype=torch.int64, device=a.device), a.new_empty(B))


@torch.library.custom_op("pytransfer::sinkhorn_log_cpu", mutates_args=())
def sinkhorn_log_cpu(
    a: torch.Tensor, b: torch.Tensor, cost: torch.Tensor, eps: float, max_iter: int, tol: float,
    g_init: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    f, g, n_iter, err = _outputs(a, b)
    (B, n), m, Bc = a.shape, b.shape[1], cost.shape[0]
    _ext.call(
        "sinkhorn_log", a.dtype, _ext.src(a, B, n), _ext.src(b, B, m), _ext.src(cost, Bc, n, m),
        B, n, m, Bc == 1, eps, max_iter, tol, _ext.src(g_init, B, m), _ext.dst(f, B, n),
        _ext.dst(g, B, m), _ext.dst(n_iter, B, dtype=torch.int64), _ext.dst(err, B),
    )
    return f, g, n_iter, err


@torch.library.custom_op("pytransfer::sinkhorn_log_triton", mutates_args=())
def sinkhorn_log_triton(
    a: torch.Tensor, b: torch.Tensor, cost: torch.Tensor, eps: float, max_iter: int, tol: float,
    g_init: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from pytransfer.kernels.sinkhorn import sinkhorn_log_triton as launch

    return launch(a.contiguous(), b.contiguous(), cost.contiguous(), eps, max_iter, tol,
                  None if g_init is None else g_init.contiguous())


for _op in (sinkhorn_log_cpu, sinkhorn_log_triton):
    _op.register_fake(_solver_fake)


def _triton_supports(*, n: int, m: int, **_) -> str | None:
    tile = 1 << ((n - 1).bit_length() + (m - 1).bit_length())
    if tile > TRITON_MAX_TILE:
        return f"the padded {n}x{m} problem exceeds one program's tile ({TRITON_MAX_TILE})"
    return None


def _triton_scaling_supports(*, n: int, m: int, **_) -> str | None:
    """The scaling kernel holds the padded K (BLOCK_N x BLOCK_M) and BLOCK_B problems'
    scalings (BLOCK_B x (BLOCK_N + BLOCK_M)) in one program."""
    from pytransfer.kernels.sinkhorn_scaling import launch_shape

    _, bb, bn, bm = launch_shape(1, n, m)
    held = bn * bm + bb * (bn + bm)
    if held > TRITON_MAX_TILE:
        return (f"the {n}x{m} problem padded to {bn}x{bm}, with {bb} problems' scalings, holds "
                f"{held} values in one program (at most {TRITON_MAX_TILE})")
    return None


_dispatch.register_backends(
    OP, reference=sinkhorn_log_reference, cpu=sinkhorn_log_cpu, triton=sinkhorn_log_triton,
    supports={"triton": _triton_supports},
)


@torch.library.custom_op("pytransfer::sinkhorn_scaling_cpu", mutates_args=())
def sinkhorn_scaling_cpu(
    a: torch.Tensor, b: torch.Tensor, cost: torch.Tensor, eps: float, max_iter: int, tol: float,
    g_init: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scaling form, shared cost (1, n, m): the C++ block kernel (one call, ``block.py``) or
    the batched BLAS GEMM loop with the fused C++ half-step, by ``block.use_gemm_loop``.
    ``g_init`` (B, m): warm start (``scaling.sinkhorn_scaling``)."""
    a, b, cost = a.contiguous(), b.contiguous(), cost.contiguous()
    B, n, m = a.shape[0], a.shape[1], b.shape[1]
    if (B * (n + m) * a.element_size() <= PER_PROBLEM_BYTES
            and block.use_gemm_loop(B, n, m, a.dtype, torch.get_num_threads())):
        return scaling.sinkhorn_scaling(a, b, cost, eps, max_iter, tol, scaling.div_cpu,
                                        sinkhorn_log_cpu, g_init)
    return block.solve(a, b, cost, eps, max_iter, tol, g_init=g_init)[:4]


def scaling_cpu_with_flags(a, b, cost, eps, max_iter, tol):
    """(f, g, n_iter, err, absorbed) of the C++ block kernel; ``absorbed`` marks problems
    that finished in the log domain."""
    a, b, cost = a.contiguous(), b.contiguous(), cost.contiguous()
    f, g, n_iter, err, absorbed, *_ = block.solve(a, b, cost, eps, max_iter, tol)
    return f, g, n_iter, err, absorbed


sinkhorn_scaling_cpu.register_fake(_solver_fake)


@torch.library.custom_op("pytransfer::sinkhorn_scaling_triton", mutates_args=())
def sinkhorn_scaling_triton(
    a: torch.Tensor, b: torch.Tensor, cost: torch.Tensor, eps: float, max_iter: int, tol: float,
    g_init: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scaling form in one Triton kernel; flagged (absorbed) problems continue in the log domain
    from their last in-range potentials, their iterations counted as on the CPU. ``g_init``:
    warm start (``scaling.sinkhorn_scaling``)."""
    from pytransfer.kernels.sinkhorn_scaling import sinkhorn_scaling_triton as launch

    lo, hi = scaling.SAFE_RANGE[torch.float64 if a.dtype == torch.float64 else torch.float32]
    a, b = a.contiguous(), b.contiguous()
    v0, start_log = scaling.warm_scalings(b, g_init, eps)
    f, g, n_iter, err, bad = launch(a, b, cost, eps, max_iter, tol, lo, hi, v0=v0)
    if start_log is not None:  # warm starts outside the scalings' range: the log domain
        i = start_log.nonzero()[:, 0]
        f[i], g[i], n_iter[i], err[i] = sinkhorn_log_triton(a[i], b[i], cost, eps, max_iter, tol,
                                                            g_init[i].contiguous())
        bad[i] = False
    if bool(bad.any()):
        ids = bad.nonzero()[:, 0]
        for done in torch.unique(n_iter[ids]).tolist():  # one call per iteration count run
            i = ids[n_iter[ids] == done]
            fi, gi, ni, ei = sinkhorn_log_triton(a[i], b[i], cost, eps, max(max_iter - done, 1),
                                                 tol, g[i].contiguous())
            f[i], g[i], n_iter[i], err[i] = fi, gi, ni + done, ei
    return f, g, n_iter, err


sinkhorn_scaling_triton.register_fake(_solver_fake)


def sinkhorn_scaling_reference(a, b, cost, eps, max_iter, tol, g_init=None):
    return scaling.sinkhorn_scaling(a, b, cost, eps, max_iter, tol, scaling.div_reference,
                                    sinkhorn_log_reference, g_init)


_dispatch.register_backends(
    OP_SCALING, reference=sinkhorn_scaling_reference, cpu=sinkhorn_scaling_cpu,
    triton=sinkhorn_scaling_triton, supports={"triton": _triton_scaling_supports},
)


@torch.library.custom_op("pytransfer::sinkhorn_values", mutates_args=())
def sinkhorn_values(
    a: torch.Tensor, b: torch.Tensor, cost: torch.Tensor, f: torch.Tensor, g: torch.Tensor,
    eps: float, grad_mode: str, factorized: bool, return_plan: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(transport_cost, objective, plan) from converged potentials; cost (B|1, n, m).

    ``factorized`` (shared cost, moderate range): values by GEMMs, and the plan is formed only
    with ``return_plan`` (else a 0-size tensor; backward forms it if it needs it). The plan's
    gradient is the implicit one at the fixed point (``implicit.plan_vjp``) in either mode.
    """
    if return_plan or not factorized:
        B, n, m = a.shape[0], a.shape[1], b.shape[1]
        _checks.fits(f"the ({B}, {n}, {m}) transport plan", B * n * m * a.element_size(),
                     a.device)
    if factorized:
        transport, objective = values_factorized(a, b, cost, f, g, eps)
        plan = plan_from_potentials(a, b, cost, f, g, eps) if return_plan else a.new_empty(0)
        return transport, objective, plan
    plan = plan_from_potentials(a, b, cost, f, g, eps)
    transport, objective = values_from_plan(a, b, cost, plan, f, g, eps)
    return transport, objective, plan


@sinkhorn_values.register_fake
def _(a, b, cost, f, g, eps, grad_mode, factorized, return_plan):
    B, n, m = a.shape[0], a.shape[1], b.shape[1]
    plan_shape = (B, n, m) if return_plan or not factorized else (0,)
    return a.new_empty((B,)), a.new_empty((B,)), a.new_empty(plan_shape)


def _setup_context(ctx, inputs, output):
    a, b, cost, f, g, eps, grad_mode, _factorized, _return_plan = inputs
    ctx.set_materialize_grads(False)  # an unused plan gets no (B, n, m) zero gradient
    ctx.save_for_backward(a, b, cost, f, g, output[2])
    ctx.eps, ctx.grad_mode = eps, grad_mode


def _backward(ctx, grad_transport, grad_objective, grad_plan):
    a, b, cost, f, g, plan = ctx.saved_tensors
    eps = ctx.eps
    need_a, need_b, need_C = ctx.needs_input_grad[:3]
    with_plan = grad_plan is not None and grad_plan.numel() > 0
    zero = a.new_zeros(a.shape[0])
    grad_transport = zero if grad_transport is None else grad_transport
    grad_objective = zero if grad_objective is None else grad_objective
    if plan.numel() == 0 and (need_C or ctx.grad_mode == "implicit"):
        plan = plan_from_potentials(a, b, cost, f, g, eps)
    ga_o, gb_o, gC_o = implicit.objective_vjp(a, b, f, g, plan, eps)
    if ctx.grad_mode == "implicit":
        ga_t, gb_t, gC_t = implicit.transport_cost_vjp(a, b, cost, f, g, plan, eps, need_C)
    else:  # JTLN eq. 11: the dual potentials, centered; d/dC = plan
        ga_t, gb_t, gC_t = implicit.center(f, a > 0), implicit.center(g, b > 0), plan
    wt, wo = grad_transport[:, None], grad_objective[:, None]
    grad_a = wt * ga_t + wo * ga_o if need_a else None
    grad_b = wt * gb_t + wo * gb_o if need_b else None
    grad_C = None
    if need_C:
        grad_C = wt[:, :, None] * gC_t + wo[:, :, None] * gC_o
    if with_plan:  # the plan's own gradient: implicit rule at the fixed point
        ga_p, gb_p, gC_p = implicit.plan_vjp(a, b, cost, f, g, plan, eps, grad_plan, need_C)
        grad_a = grad_a + ga_p if need_a else None
        grad_b = grad_b + gb_p if need_b else None
        grad_C = grad_C + gC_p if need_C else None
    if need_C and cost.shape[0] == 1 and a.shape[0] != 1:
        grad_C = grad_C.sum(0, keepdim=True)
    return grad_a, grad_b, grad_C, None, None, None, None, None, None


sinkhorn_values.register_autograd(_backward, setup_context=_setup_context)

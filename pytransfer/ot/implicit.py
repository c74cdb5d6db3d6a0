"""Gradients of Sinkhorn's outputs at the fixed point.

With plan P_ij = exp((f_i + g_j - C_ij)/eps) and marginal constraints P 1 = a, P^T 1 = b,
differentiating the constraints gives the (n + m) system

    [diag(r)  P      ] [df]          [da]   [(P o dC) 1  ]
    [P^T      diag(c)] [dg] = eps *  [db] + [(P o dC)^T 1]     (r = P 1, c = P^T 1),

singular along (1, -1) only (the potentials' gauge). For L = <P, C> (the "sharp" Sinkhorn
value, Luise et al. 2018) the adjoint z = H^{-1} w with w = [(P o C) 1; (P o C)^T 1] / eps
gives grad_a = eps z_f, grad_b = eps z_g, grad_C = P o (1 - C/eps + z_f 1^T + 1 z_g^T).
The system is solved through its Schur complement on the smaller side (m x m for n >= m),
S = diag(c) - P^T diag(1/r) P, which is PSD with null space 1; adding 1 1^T on the support
fixes the gauge. Zero-mass rows (columns) decouple; their adjoint is the limit a_i -> 0,
z_i = sum_j q_ij (C_ij/eps - z_g,j) with q_i the conditional plan row softmax_j((g_j - C_ij)/eps).
Masses below the dtype's smallest normal number (``torch.finfo(dtype).tiny``: 1.2e-38 in
float32, e.g. from a confident softmax) take that zero-mass limit too: 1/r would overflow.
"""

from __future__ import annotations

import torch


def center(x: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """x minus its mean over the support (gradients w.r.t. weights are defined up to a constant)."""
    mean = (x * support).sum(-1, keepdim=True) / support.sum(-1, keepdim=True)
    return x - mean


def _solve_spd(S: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Batched solve of the (symmetric positive definite) gauge-fixed Schur complements by
    Cholesky; systems that are numerically not PD (extreme plans) fall back to LU."""
    L, info = torch.linalg.cholesky_ex(S)
    x = torch.cholesky_solve(rhs[..., None], L)[..., 0]
    bad = info > 0
    if bool(bad.any()):
        x[bad] = torch.linalg.solve(S[bad], rhs[bad])
    return x


def _adjoint_rows_eliminated(P, C, W, eps, sup_a, sup_b, f, g):
    """Adjoint (z_f, z_g) of <P, W>, eliminating the row block (cheap when m <= n)."""
    r, c = P.sum(-1), P.sum(-2)
    inv_r = torch.where(sup_a, 1 / torch.where(sup_a, r, 1).clamp_min(torch.finfo(P.dtype).tiny), 0)
    PW = torch.where(P > 0, P * W, 0)  # 0 * inf = 0 on forbidden pairs
    wf, wg = PW.sum(-1) / eps, PW.sum(-2) / eps
    Q = P * inv_r.sqrt()[:, :, None]  # S = diag(c) - Q^T Q with Q = diag(1/r)^(1/2) P
    Pt = P.transpose(-1, -2)
    S = torch.diag_embed(c) - Q.transpose(-1, -2) @ Q
    mb = sup_b.to(P.dtype)
    S = S + mb[:, :, None] * mb[:, None, :] + torch.diag_embed(1 - mb)
    rhs = torch.where(sup_b, wg - (Pt @ (wf * inv_r)[:, :, None])[..., 0], 0)
    zg = _solve_spd(S, rhs)
    zf = (wf - (P @ zg[:, :, None])[..., 0]) * inv_r
    # Zero-mass entries: conditional plans of the c-transforms (limits a_i -> 0, b_j -> 0).
    ninf = torch.tensor(float("-inf"), dtype=P.dtype, device=P.device)
    if not bool(sup_a.all()):
        q_row = torch.softmax(torch.where(sup_b[:, None, :], (g[:, None, :] - C) / eps, ninf), -1)
        zf = torch.where(sup_a, zf, _expect(q_row, W / eps - zg[:, None, :], -1))
    if not bool(sup_b.all()):
        q_col = torch.softmax(torch.where(sup_a[:, :, None], (f[:, :, None] - C) / eps, ninf), -2)
        zg = torch.where(sup_b, zg, _expect(q_col, W / eps - zf[:, :, None], -2))
    return zf, zg


def _expect(q, x, dim):
    """sum q x along dim, 0 where q = 0 (x may be +inf on forbidden pairs)."""
    return torch.where(q > 0, q * x, 0).sum(dim)


@torch.library.custom_op("pytransfer::sinkhorn_adjoint", mutates_args=())
def sinkhorn_adjoint(
    a: torch.Tensor, b: torch.Tensor, cost: torch.Tensor, f: torch.Tensor, g: torch.Tensor,
    plan: torch.Tensor, eps: float, weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adjoint (z_f, z_g) of <plan, weight> (weight defaults to the cost; an opaque op: its
    zero-mass branch reads values). With w = [(P o W) 1; (P o W)^T 1] / eps in place of the
    cost's, the gradient of <P, W> for a fixed W is eps z_f, eps z_g and
    P o (z_f 1^T + 1 z_g^T - W/eps) w.r.t. a, b and C: the plan's vector-Jacobian product."""
    C = cost.expand_as(plan)
    W = C if weight is None else weight.expand_as(plan)
    tiny = torch.finfo(plan.dtype).tiny  # subnormal masses: the zero-mass limit (module doc)
    sup_a, sup_b = a >= tiny, b >= tiny
    if plan.shape[-1] <= plan.shape[-2]:
        zf, zg = _adjoint_rows_eliminated(plan, C, W, eps, sup_a, sup_b, f, g)
    else:
        tr = lambda x: x.transpose(-1, -2)  # noqa: E731
        zg, zf = _adjoint_rows_eliminated(tr(plan), tr(C), tr(W), eps, sup_b, sup_a, g, f)
    return zf.contiguous(), zg.contiguous()


@sinkhorn_adjoint.register_fake
def _(a, b, cost, f, g, plan, eps, weight=None):
    return torch.empty_like(f), torch.empty_like(g)


def transport_cost_vjp(
    a: torch.Tensor, b: torch.Tensor, cost: torch.Tensor, f: torch.Tensor, g: torch.Tensor,
    plan: torch.Tensor, eps: float, need_cost_grad: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Exact (grad_a, grad_b, grad_C) of <plan, C> per problem at the fixed point.

    ``cost`` is (B, n, m) or (1, n, m). grad_a, grad_b are centered on the supports; grad_C is
    skipped (None) unless ``need_cost_grad``.
    """
    zf, zg = sinkhorn_adjoint(a, b, cost, f, g, plan, eps)
    grad_C = None
    if need_cost_grad:
        grad_C = torch.where(plan > 0, plan * (1 - cost / eps + zf[:, :, None] + zg[:, None, :]),
                             0)  # 0 on forbidden pairs (C = +inf)
    return center(eps * zf, a > 0), center(eps * zg, b > 0), grad_C


def plan_vjp(
    a: torch.Tensor, b: torch.Tensor, cost: torch.Tensor, f: torch.Tensor, g: torch.Tensor,
    plan: torch.Tensor, eps: float, grad_plan: torch.Tensor, need_cost_grad: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Exact (grad_a, grad_b, grad_C) of <plan, grad_plan> at the fixed point (the implicit
    rule for the plan itself; ``sinkhorn_adjoint``)."""
    zf, zg = sinkhorn_adjoint(a, b, cost, f, g, plan, eps, grad_plan)
    grad_C = None
    if need_cost_grad:
        grad_C = plan * (zf[:, :, None] + zg[:, None, :] - grad_plan / eps)
    return center(eps * zf, a > 0), center(eps * zg, b > 0), grad_C


def objective_vjp(
    a: torch.Tensor, b: torch.Tensor, f: torch.Tensor, g: torch.Tensor, plan: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact (grad_a, grad_b, grad_C) of <P, C> + eps KL(P || a b^T) by the envelope theorem.

    The multipliers of the KL-regularised problem are alpha = f - eps log a (beta likewise);
    on zero-mass entries the extended f already is that multiplier (the c-transform).
    """
    sup_a, sup_b = a > 0, b > 0
    alpha = torch.where(sup_a, f - eps * torch.log(torch.where(sup_a, a, 1)), f)
    beta = torch.where(sup_b, g - eps * torch.log(torch.where(sup_b, b, 1)), g)
    return center(alpha, sup_a), center(beta, sup_b), plan

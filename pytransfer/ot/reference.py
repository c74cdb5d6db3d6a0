"""Plain-PyTorch batched log-domain Sinkhorn: the specification in code.

Shapes: a (B, n), b (B, m), cost (B, n, m) or (1, n, m). Potentials are in cost units with
plan_ij = exp((f_i + g_j - C_ij) / eps) (JTLN: f = eps log u, g = eps log v, the paper's
lambda = 1/eps). Zero-mass entries never enter a log-sum-exp; they keep the finite
c-transform value as their potential and carry no mass. Differentiable (autograd through the
loop is the ``grad="unrolled"`` mode).
"""

from __future__ import annotations

import torch


def _masked_log(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log w where w > 0 else 0, support mask); NaN-free gradients at w = 0."""
    support = w > 0
    return torch.log(torch.where(support, w, torch.ones_like(w))), support


def sinkhorn_log_reference(
    a: torch.Tensor, b: torch.Tensor, cost: torch.Tensor, eps: float, max_iter: int, tol: float,
    g_init: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(f, g, n_iter, err)``; each problem stops once ``err <= tol * mass`` (tol > 0).
    ``g_init`` (B, m) warm-starts g (default 0).

    Iteration k maps (f, g) to f_i = eps log a_i - eps LSE_j((g_j - C_ij)/eps), then
    g_j = eps log b_j - eps LSE_i((f_i - C_ij)/eps). ``err`` is ||plan 1 - a||_1 of the final
    state (columns are exact after a g-update); it is the by-product of the next f-update.
    """
    B = a.shape[0]
    K = -cost / eps
    log_a, sup_a = _masked_log(a)
    log_b, sup_b = _masked_log(b)
    ninf = torch.tensor(float("-inf"), dtype=a.dtype, device=a.device)
    F = torch.zeros_like(a)
    G = torch.zeros_like(b) if g_init is None else g_init / eps
    thr = tol * a.sum(-1)
    n_iter = torch.zeros(B, dtype=torch.int64, device=a.device)
    err = torch.zeros_like(thr)
    active = torch.ones(B, dtype=torch.bool, device=a.device)
    for it in range(max_iter + 1):
        lse_r = torch.logsumexp(torch.where(sup_b, G, ninf)[:, None, :] + K, dim=-1)
        if it > 0:
            e = torch.where(sup_a, (torch.exp(F + lse_r) - a).abs(), 0).sum(-1)
            err = torch.where(active, e, err)
            n_iter = torch.where(active, it, n_iter)
            stop = (e <= thr) if tol > 0 else torch.zeros_like(active)
            active = active & ~stop & (it < max_iter)
            if not bool(active.any()):
                break
        F = torch.where(active[:, None], log_a - lse_r, F)
        lse_c = torch.logsumexp(torch.where(sup_a, F, ninf)[:, :, None] + K, dim=-2)
        G = torch.where(active[:, None], log_b - lse_c, G)
    F = torch.where(sup_a, F, -lse_r)
    return eps * F, eps * G, n_iter, err


def finite_cost(cost: torch.Tensor) -> torch.Tensor:
    """The cost with +inf (forbidden pairs, where the plan is 0) replaced by 0, so that
    0 * inf counts as 0 in <P, C> and its gradients."""
    return cost.nan_to_num(posinf=0.0)


def plan_from_potentials(
    a: torch.Tensor, b: torch.Tensor, cost: torch.Tensor, f: torch.Tensor, g: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    """plan_ij = exp((f_i + g_j - C_ij)/eps) on the support of a x b, exactly 0 off it.

    Zero-mass entries enter as -inf potentials, so no (B, n, m) mask is formed.
    """
    ninf = torch.tensor(float("-inf"), dtype=f.dtype, device=f.device)
    fs = torch.where(a > 0, f / eps, ninf)
    gs = torch.where(b > 0, g / eps, ninf)
    return torch.exp(fs[:, :, None] + gs[:, None, :] - cost / eps)


def values_from_plan(
    a: torch.Tensor, b: torch.Tensor, cost: torch.Tensor, plan: torch.Tensor, f: torch.Tensor,
    g: torch.Tensor, eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(<P, C>, <P, C> + eps KL(P || a b^T)) per problem, generalised KL.

    With log P = (f + g - C)/eps on the support the objective needs only the marginals of P:
    <P 1, f - eps log a> + <P^T 1, g - eps log b> - eps sum P + eps |a| |b|.
    """
    cost = finite_cost(cost)
    if cost.shape[0] == 1:  # shared cost: one matrix-vector product
        transport = plan.flatten(1) @ cost.flatten()
    else:
        transport = (plan * cost).sum((-2, -1))
    log_a, _ = _masked_log(a)
    log_b, _ = _masked_log(b)
    r, c = plan.sum(-1), plan.sum(-2)
    objective = ((r * (f - eps * log_a)).sum(-1) + (c * (g - eps * log_b)).sum(-1)
                 - eps * r.sum(-1) + eps * a.sum(-1) * b.sum(-1))
    return transport, objective


def values_factorized(
    a: torch.Tensor, b: torch.Tensor, cost: torch.Tensor, f: torch.Tensor, g: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``values_from_plan`` for a shared cost (1, n, m) without forming the (B, n, m) plan.

    P = e^s diag(u) K diag(v) with u = exp(f/eps - max), v = exp(g/eps - max) in (0, 1],
    K = exp(-(C - min C)/eps): the marginals and <P, C> are GEMMs, O(B (n + m)) memory.
    Exact up to entries whose scaling underflows, relatively e^(range - 87) (float32) or
    e^(range - 745) (float64) of their column's largest; callers use it only for
    (max C - min C)/eps within ``scaling.AUTO_RANGE`` (negligible).
    """
    ninf = torch.tensor(float("-inf"), dtype=f.dtype, device=f.device)
    fs = torch.where(a > 0, f / eps, ninf)
    gs = torch.where(b > 0, g / eps, ninf)
    fmax = fs.max(-1, keepdim=True).values
    gmax = gs.max(-1, keepdim=True).values
    u, v = torch.exp(fs - fmax), torch.exp(gs - gmax)
    C = cost[0]
    cmin = C.min()
    K = torch.exp(-(C - cmin) / eps)
    C = finite_cost(C)
    scale = torch.exp(fmax + gmax - cmin / eps)  # (B, 1)
    r = scale * u * (v @ K.t())
    c = scale * v * (u @ K)
    transport = scale[:, 0] * (u * (v @ (K * C).t())).sum(-1)
    log_a, _ = _masked_log(a)
    log_b, _ = _masked_log(b)
    objective = ((r * (f - eps * log_a)).sum(-1) + (c * (g - eps * log_b)).sum(-1)
                 - eps * r.sum(-1) + eps * a.sum(-1) * b.sum(-1))
    return transport, objective

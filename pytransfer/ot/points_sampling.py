"""``sample_coupling``: pairs (i, j) drawn from a point-cloud Sinkhorn plan without forming it.

P_ij = exp((f_i + g_j - C_ij)/eps) factorises as r_i q(j | i) with r = P 1 and the conditional
q(j | i) = softmax_j((g_j - C_ij)/eps) (f_i cancels). Rows are drawn from r (computed by one
tiled pass), then each drawn row's column by the Gumbel-max trick over column tiles: exact in
distribution, memory O(k_chunk x m_chunk). Used by the free-energy method's OT interpolation
of data sets whose n x m plan does not fit.
"""

from __future__ import annotations

import torch

from pytransfer import _checks
from pytransfer.ot import points_reference as ref
from pytransfer.ot.points import SAMPLE_CHUNK, PointSinkhornResult


def _row_marginal(x, y, a, b, f, g, eps, p):
    """r = P 1 on the support of a (0 elsewhere), tiled over rows."""
    chunk = max(1, SAMPLE_CHUNK // y.shape[0])
    sup_b = b > 0
    out = []
    for i0 in range(0, x.shape[0], chunk):
        cost = ref.point_cost(x[i0:i0 + chunk], y, p)
        lse = torch.logsumexp(torch.where(sup_b, g / eps, float("-inf")) - cost / eps, -1)
        out.append(torch.exp(f[i0:i0 + chunk] / eps + lse))
    return torch.where(a > 0, torch.cat(out), 0)


def _columns(x, y, b, g, eps, p, rows, generator):
    """One column per drawn row: argmax_j (g_j - C_ij)/eps + Gumbel noise, tiled."""
    k, m = rows.numel(), y.shape[0]
    kc = max(1, min(k, SAMPLE_CHUNK // min(m, SAMPLE_CHUNK)))
    mc = max(1, SAMPLE_CHUNK // kc)
    h = torch.where(b > 0, g / eps, float("-inf"))
    cols = torch.empty(k, dtype=torch.int64, device=x.device)
    for s0 in range(0, k, kc):
        xs = x[rows[s0:s0 + kc]]
        best = torch.full((xs.shape[0],), float("-inf"), dtype=x.dtype, device=x.device)
        arg = torch.zeros(xs.shape[0], dtype=torch.int64, device=x.device)
        for j0 in range(0, m, mc):
            cost = ref.point_cost(xs, y[j0:j0 + mc], p)
            u = torch.rand(cost.shape, dtype=x.dtype, device=x.device, generator=generator)
            score = h[j0:j0 + mc] - cost / eps - torch.log(-torch.log(u))
            v, j = score.max(-1)
            better = v > best
            best = torch.where(better, v, best)
            arg = torch.where(better, j + j0, arg)
        cols[s0:s0 + kc] = arg
    return cols


def sample_coupling(
    result: PointSinkhornResult, x: torch.Tensor, y: torch.Tensor, k: int, *,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw k index pairs (i, j) ~ P / |P| from the plan of ``result`` (a ``sinkhorn_points``
    result on the same x, y). Returns i, j of shape (k,), or (B, k) for batched clouds.
    With ``debias=True`` the plan is the (a, b) problem's."""
    if not isinstance(result, PointSinkhornResult):
        raise TypeError(f"result must be a PointSinkhornResult, got {type(result).__name__}")
    _checks.positive_int("k", k)
    for name, t in (("x", x), ("y", y)):
        _checks.floating(name, t)
    if x.shape[:-1] != result.f.shape or y.shape[:-1] != result.g.shape:
        raise ValueError(
            f"x {tuple(x.shape)} and y {tuple(y.shape)} do not match the result's potentials "
            f"f {tuple(result.f.shape)} and g {tuple(result.g.shape)}")
    eps = float(result.eps_schedule[-1])
    with torch.no_grad():
        if x.dim() == 2:
            return _sample_one(result, x, y, result.a, result.b, result.f, result.g, eps, k,
                               generator)
        pairs = [_sample_one(result, x[q], y[q], result.a[q], result.b[q], result.f[q],
                             result.g[q], eps, k, generator) for q in range(x.shape[0])]
        return torch.stack([i for i, _ in pairs]), torch.stack([j for _, j in pairs])


def _sample_one(result, x, y, a, b, f, g, eps, k, generator):
    x, y = ref.shift(x.detach(), y.detach())
    x, y, f, g = x.to(f.dtype), y.to(f.dtype), f.detach(), g.detach()
    r = _row_marginal(x, y, a, b, f, g, eps, result.p)
    rows = torch.multinomial(r, k, replacement=True, generator=generator)
    return rows, _columns(x, y, b, g, eps, result.p, rows, generator)

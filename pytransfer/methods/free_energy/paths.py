"""Data paths p(x, t) of a transfer: the mixture (eq. 23) and the OT interpolation (Appendix F,
eq. 36-37) with its entropic coupling of the source and target samples."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from pytransfer.ot import PointSinkhornResult, sample_coupling, sinkhorn_points


def sample_batch(data, batch_size: int, gen: torch.Generator):
    """min(batch_size, N) rows of (x, y) drawn uniformly with replacement."""
    x, y = data
    idx = torch.randint(0, x.shape[0], (min(batch_size, x.shape[0]),), generator=gen)
    return x[idx], y[idx]


@dataclass
class DataPath:
    """Rows of p(x, t) drawn once, as functions of t (eq. 23, 37): x(t) = (1 - t) x0 + t x1,
    data weights pi(t) = (1 - t) pi0 + t pi1 and labels y0 (hard, fixed) or, with y1 given,
    the label distributions (1 - t) y0 + t y1 (Remark 11). ``at(t)`` takes a float or a 0-d
    tensor (differentiable: the t-derivatives of Lemma 9)."""

    x0: torch.Tensor
    x1: torch.Tensor
    y0: torch.Tensor
    pi0: torch.Tensor
    pi1: torch.Tensor
    y1: torch.Tensor | None = None

    def at(self, t) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.x0 if self.x1 is self.x0 else torch.lerp(self.x0, self.x1, t)
        y = self.y0 if self.y1 is None else torch.lerp(self.y0, self.y1, t)
        return x, y, torch.lerp(self.pi0, self.pi1, t)


def mixture_batch(source, target, batch_size: int, gen: torch.Generator) -> DataPath:
    """p(x, t) = (1 - t) p_s + t p_t (eq. 23): half source, half target rows with data weights
    (1 - t)/n_s and t/n_t (so d/dt of an expectation is E_target - E_source); labels kept."""
    xs, ys = sample_batch(source, max(batch_size // 2, 1), gen)
    xt, yt = sample_batch(target, max(batch_size // 2, 1), gen)
    ns, nt = xs.shape[0], xt.shape[0]
    pi0 = torch.cat([torch.full((ns,), 1.0 / ns), torch.zeros(nt)]).to(xs.dtype)
    pi1 = torch.cat([torch.zeros(ns), torch.full((nt,), 1.0 / nt)]).to(xs.dtype)
    x = torch.cat([xs, xt])
    return DataPath(x, x, torch.cat([ys, yt]), pi0, pi1)


def ot_coupling(xs: torch.Tensor, xt: torch.Tensor, eps: float = 0.05,
                max_iter: int = 2000) -> torch.Tensor:
    """Gamma* of eq. 36 between the empirical source and target (uniform weights) on the dense
    cost ||x_i - x_j||^2 (divided by its mean, so ``eps`` is relative), by entropic Sinkhorn
    (``pytransfer.ot.sinkhorn``) as the paper does; (n_s, n_t), mass 1. For data sets whose
    n_s x n_t cost fits in memory."""
    from pytransfer.ot import sinkhorn

    cost = torch.cdist(xs.flatten(1), xt.flatten(1)).pow(2)
    cost = cost / cost.mean().clamp_min(torch.finfo(cost.dtype).tiny)
    a = torch.full((xs.shape[0],), 1.0 / xs.shape[0], dtype=cost.dtype)
    b = torch.full((xt.shape[0],), 1.0 / xt.shape[0], dtype=cost.dtype)
    return sinkhorn(a, b, cost, eps, max_iter=max_iter, tol=1e-6, return_plan=True).plan


def ot_coupling_points(xs: torch.Tensor, xt: torch.Tensor, eps: float = 0.05,
                       max_iter: int = 2000) -> PointSinkhornResult:
    """The coupling of :func:`ot_coupling` (same cost scaling, same plan) as the potentials of
    the point-cloud Sinkhorn (``pytransfer.ot.sinkhorn_points``): memory O((n_s + n_t) d), so
    data sets whose n_s x n_t plan does not fit can be coupled; pairs are drawn from it by
    ``pytransfer.ot.sample_coupling``. Warns when the solve stops unconverged."""
    x, y = xs.flatten(1), xt.flatten(1)
    # mean over all pairs of ||x_i - y_j||^2, without the n_s x n_t matrix; the point-cloud
    # cost is ||x - y||^2 / 2, hence the factor 1/2 on eps
    mean_sq = x.pow(2).sum(1).mean() + y.pow(2).sum(1).mean() - 2 * x.mean(0) @ y.mean(0)
    scale = float(mean_sq.clamp_min(torch.finfo(x.dtype).tiny)) / 2
    res = sinkhorn_points(x, y, eps=eps * scale, max_iter=max_iter, tol=1e-6)
    if not bool(res.converged.all()):
        warnings.warn(f"the OT coupling did not converge in {max_iter} iterations (marginal "
                      f"error {float(res.marginal_error.max()):.2e}); raise max_iter or eps",
                      RuntimeWarning, stacklevel=2)
    return res


def sample_pairs(plan: torch.Tensor, n: int, gen: torch.Generator):
    """n index pairs (i, j) drawn i.i.d. from the coupling ``plan`` (n_s, n_t)."""
    flat = torch.multinomial(plan.flatten().double(), n, replacement=True, generator=gen)
    return flat // plan.shape[1], flat % plan.shape[1]


def ot_batch(source, target, batch_size: int, gen: torch.Generator, *,
             plan: torch.Tensor | PointSinkhornResult, classes: int) -> DataPath:
    """The OT interpolation of Appendix F (eq. 37): pairs (i, j) ~ Gamma*, rows
    x(t) = (1 - t) x_i + t x_j with equal weights and labels (1 - t) e_{y_i} + t e_{y_j}
    (Remark 11). ``plan``: the dense plan of :func:`ot_coupling` or the potentials of
    :func:`ot_coupling_points` on the full source and target."""
    (xs, ys), (xt, yt) = source, target
    if isinstance(plan, PointSinkhornResult):
        i, j = sample_coupling(plan, xs.flatten(1), xt.flatten(1), batch_size, generator=gen)
    else:
        i, j = sample_pairs(plan, batch_size, gen)
    hot = torch.nn.functional.one_hot
    pi = torch.full((batch_size,), 1.0 / batch_size, dtype=xs.dtype)
    return DataPath(xs[i], xt[j], hot(ys[i], classes).to(xs.dtype), pi, pi,
                    hot(yt[j], classes).to(xs.dtype))


INTERPOLATIONS = {"mixture": mixture_batch, "ot": ot_batch}

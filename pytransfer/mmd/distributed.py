"""MK-MMD on the global batch under torch.distributed.

Every rank holds its shard of xs and xt; the global batch is their concatenation in rank
order. Bandwidth moments, the linear estimator's sums and the kernel-weight statistics are
all-reduced; the quadratic estimator all-gathers the features (it needs every pair). The
returned loss is the global loss on every rank, and its gradient w.r.t. a rank's features is
the global loss's gradient w.r.t. those rows (other ranks' rows enter as constants).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from pytransfer.mmd.functional import mk_mmd
from pytransfer.mmd.spec import KernelSpec, bandwidth_from_moments
from pytransfer.mmd.weights import solve_weights, tuple_stats


def _sum(t: torch.Tensor, group) -> torch.Tensor:
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


def global_bandwidth(xs: torch.Tensor, xt: torch.Tensor, group=None) -> torch.Tensor:
    """Mean pairwise squared distance of the pooled global batch (two all-reduces), float64."""
    x = torch.cat([xs.detach(), xt.detach()]).double()
    first = _sum(torch.cat([x.new_tensor([x.shape[0]]), x.sum(0)]), group)
    count, mean = first[0], first[1:] / first[0]
    centered = _sum((x - mean).square().sum(), group)
    return bandwidth_from_moments(count, centered)


def global_weights(xs: torch.Tensor, xt: torch.Tensor, spec: KernelSpec, base: torch.Tensor,
                   reg: float, group=None) -> torch.Tensor:
    """``optimize_kernel_weights`` on the global batch: d and Q from all-reduced sums."""
    gammas = 1.0 / (2.0 * torch.tensor(spec.multipliers, dtype=torch.float64,
                                       device=xs.device) * base.double())
    count, s1, s2 = (_sum(t, group) for t in tuple_stats(xs, xt, gammas))
    return solve_weights(count, s1, s2, reg).to(dtype=xs.dtype, device=xs.device)


def global_mk_mmd(xs: torch.Tensor, xt: torch.Tensor, spec: KernelSpec,
                  weights: torch.Tensor | None, estimator: str, backend: str,
                  check_inputs: bool, group=None) -> torch.Tensor:
    """The global-batch estimate with the kernels' base fixed by the caller (a tensor)."""
    kw = {"kernels": spec, "estimator": estimator, "weights": weights, "backend": backend,
              "check_inputs": check_inputs}
    if estimator == "linear":
        local = mk_mmd(xs, xt, **kw)
        P = xs.shape[0] // 2
        total = _sum(torch.stack([local.detach() * P, local.new_tensor(float(P))]), group)
        scaled = local * (P / total[1])
        return scaled + (total[0] / total[1] - scaled).detach()
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    parts = []
    for x in (xs, xt):
        shards = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(shards, x.detach().contiguous(), group=group)
        shards[rank] = x
        parts.append(torch.cat(shards))
    return mk_mmd(parts[0], parts[1], **kw)

"""``class_pair_ot``: OT between every source class cloud and every target class cloud.

JTLN's "OT as cost metric" (Lu et al., "Optimal Transport for Deep Joint Transfer Learning",
eq. 15-16): the ground cost between a source class and a target class is the entropic OT (by
default the Sinkhorn divergence) between their feature clouds. The Ls x Lt problems run as one
batched ``sinkhorn_points`` call, ragged classes padded with zero weights.
"""

from __future__ import annotations

import torch

from pytransfer import _checks
from pytransfer.ot.points import self_ot, sinkhorn_points


def _clouds(feats: torch.Tensor, labels: torch.Tensor, num: int | None, side: str):
    """(L, n_max, d) class clouds with uniform weights (L, n_max), zero on the padding."""
    name = "ys" if side == "source" else "yt"
    _checks.tensor(name, labels)
    if labels.dim() != 1 or labels.shape[0] != feats.shape[0]:
        raise ValueError(f"{name} must be 1-D with one label per row of the features, got "
                         f"shape {tuple(labels.shape)} for {feats.shape[0]} rows")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class labels, got {labels.dtype}")
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError(f"{name} has negative labels")
    L = num if num is not None else (int(labels.max()) + 1 if labels.numel() else 0)
    if labels.numel() and int(labels.max()) >= L:
        raise ValueError(f"{name} has label {int(labels.max())} >= the number of classes {L}")
    counts = torch.bincount(labels, minlength=L)
    empty = (counts == 0).nonzero().flatten().tolist()
    if L == 0 or empty:
        raise ValueError(f"{side} class {empty[0] if empty else 0} has no samples ({name})")
    order = torch.argsort(labels, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(labels.numel(), device=labels.device) - starts[labels[order]]
    cls = labels[order]
    nmax = int(counts.max())
    cloud = feats.new_zeros(L, nmax, feats.shape[1])
    cloud = cloud.index_put((cls, pos), feats[order])
    w = feats.new_zeros(L, nmax)
    w = w.index_put((cls, pos), 1 / counts[cls].to(feats.dtype))
    return cloud, w


def class_pair_ot(
    fs: torch.Tensor, ys: torch.Tensor, ft: torch.Tensor, yt: torch.Tensor, *, eps: float,
    p: int = 2, debias: bool = True, num_source_classes: int | None = None,
    num_target_classes: int | None = None, max_iter: int = 1000, tol: float = 1e-6,
    eps_scaling: float | None = None, backend: str = "auto", cache: bool | None = None,
    value: str = "objective",
) -> torch.Tensor:
    """(Ls, Lt) matrix of OT_eps (``debias``: Sinkhorn divergence S_eps) between the uniform
    clouds {fs[ys == k]} and {ft[yt == l]}; differentiable in fs and ft.

    ``value="transport_cost"`` returns <P, C> of the entropic plans instead (JTLN's eq. 16
    distance; not debiased, not differentiable).

    fs (Ns, d), ys (Ns,) int labels in [0, Ls); ft (Nt, d), yt (Nt,). The class counts default
    to max label + 1; every class must have a sample (the error names the first that has not).
    """
    if value not in ("objective", "transport_cost"):
        raise ValueError(f"value must be 'objective' or 'transport_cost', got {value!r}")
    if value == "transport_cost" and debias:
        raise ValueError("debias=True needs value='objective' (S_eps debiases the objective)")
    for name, t in (("fs", fs), ("ft", ft)):
        _checks.floating(name, t)
        _checks.ndim(name, t, (2,))
    xs, ws = _clouds(fs, ys, num_source_classes, "source")
    xt, wt = _clouds(ft, yt, num_target_classes, "target")
    Ls, Lt = xs.shape[0], xt.shape[0]
    x = xs[:, None].expand(Ls, Lt, *xs.shape[1:]).reshape(Ls * Lt, *xs.shape[1:])
    a = ws[:, None].expand(Ls, Lt, ws.shape[1]).reshape(Ls * Lt, -1)
    y = xt[None].expand(Ls, Lt, *xt.shape[1:]).reshape(Ls * Lt, *xt.shape[1:])
    b = wt[None].expand(Ls, Lt, wt.shape[1]).reshape(Ls * Lt, -1)
    kw = dict(eps=eps, p=p, max_iter=max_iter, tol=tol, eps_scaling=eps_scaling,
              backend=backend, cache=cache)
    cost = getattr(sinkhorn_points(x, y, a, b, debias=False, **kw), value).reshape(Ls, Lt)
    if debias:
        cost = cost - self_ot(xs, ws, **kw)[:, None] / 2 - self_ot(xt, wt, **kw)[None, :] / 2
    return cost

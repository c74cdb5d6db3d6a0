"""JTLN's MK-MMD class-pair cost matrix (Lu et al., section 3.4.1, eq. 12-14): the squared
MMD between every source class cloud and every target class cloud in one tiled pass."""

from __future__ import annotations

import torch

from pytransfer import _checks
from pytransfer.mmd.functional import base_value, check_features, check_kernels, check_weights
from pytransfer.mmd.reference import sq_dists
from pytransfer.mmd.spec import KernelSpec, standardize

#: pair evaluations per tile (rows * columns)
TILE_ELEMENTS = 1 << 21


def _labels(name: str, y: object, n: int, num_classes: object, arg: str
            ) -> tuple[torch.Tensor, int]:
    if not isinstance(y, torch.Tensor) or y.dtype not in (torch.int32, torch.int64, torch.uint8):
        raise TypeError(f"{name} must be an integer label tensor")
    if y.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {tuple(y.shape)}")
    if n < 2:
        raise ValueError(f"{name}: need >= 2 samples (every class needs 2), got {n}")
    if bool((y < 0).any()):
        raise ValueError(f"{name} has negative labels")
    L = int(y.max()) + 1 if num_classes is None else _checks.positive_int(arg, num_classes)
    if L > n // 2:
        raise ValueError(f"{name}: {L} classes need >= {2 * L} samples (2 per class), got {n}"
                         + ("" if num_classes is None else f"; {arg}={L} is too large"))
    counts = torch.bincount(y.long(), minlength=L)
    if counts.numel() > L:
        raise ValueError(f"{name} has labels >= num_classes={L}")
    small = torch.nonzero(counts < 2).flatten().tolist()
    if small:
        raise ValueError(f"{name}: classes {small} have fewer than 2 samples (the unbiased "
                         f"estimate needs 2; an empty class has no distribution)")
    return y.long(), L


def _kernel(D: torch.Tensor, gammas: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(D)
    for g, w in zip(gammas, weights):
        out = out + w * torch.exp(-g * D)
    return out


def _class_sums(xa, ya, La, xb, yb, Lb, gammas, weights, same):
    """S[a, b] = sum_{i in class a, j in class b} k(xa_i, xb_j), tiled over rows of xa;
    with ``same`` (xa is xb) only the diagonal S[a, a] without i = j, as (La,)."""
    onehot_b = torch.nn.functional.one_hot(yb, Lb).to(xa.dtype)
    rows = max(1, TILE_ELEMENTS // max(1, xb.shape[0]))
    out = xa.new_zeros((La,) if same else (La, Lb))
    for r0 in range(0, xa.shape[0], rows):
        K = _kernel(sq_dists(xa[r0:r0 + rows], xb), gammas, weights)
        if same:
            idx = torch.arange(r0, r0 + K.shape[0], device=K.device)
            K = K.index_put((idx - r0, idx), K.new_zeros(()))  # i = j excluded
            out = out.index_add(0, ya[r0:r0 + rows],
                                (K @ onehot_b).gather(1, ya[r0:r0 + rows, None])[:, 0])
        else:
            out = out.index_add(0, ya[r0:r0 + rows], K @ onehot_b)
    return out


def class_pair_mmd(
    fs: torch.Tensor, ys: torch.Tensor, ft: torch.Tensor, yt: torch.Tensor, *,
    kernels: KernelSpec | None = None, estimator: str = "quadratic",
    weights: torch.Tensor | None = None, num_source_classes: int | None = None,
    num_target_classes: int | None = None, check_inputs: bool = True,
) -> torch.Tensor:
    """(Ls, Lt) cost matrix C_ab = d_k^2(source class a, target class b), the unbiased
    U-statistic per pair (JTLN eq. 12 with eq. 13's kernel; one bandwidth for the pooled
    features). Within-class kernel sums are computed once per class and cross sums once per
    source row tile: O((Ns + Nt) Nt + Ns^2) pair evaluations in all, not Ls * Lt calls.
    Differentiable w.r.t. the features (autograd keeps the tiles for backward).
    """
    check_features(fs, ft, check_inputs, names=("fs", "ft"))
    if estimator != "quadratic":
        raise ValueError(f"estimator must be 'quadratic' for class_pair_mmd (a class pair has "
                         f"unpaired samples of different sizes), got {estimator!r}")
    ys, Ls = _labels("ys", ys, fs.shape[0], num_source_classes, "num_source_classes")
    yt, Lt = _labels("yt", yt, ft.shape[0], num_target_classes, "num_target_classes")
    spec = check_kernels(kernels)
    w = check_weights(weights, spec.num, fs, check_inputs)
    # in units of the bandwidth, centred: scale invariant, no offset cancellation in sq_dists
    fs, ft, _ = standardize(fs, ft, base_value(spec, fs, ft, check_inputs), check_inputs)
    gammas = 1.0 / (2.0 * torch.tensor(spec.multipliers, dtype=fs.dtype, device=fs.device))
    ns = torch.bincount(ys, minlength=Ls).to(fs.dtype)
    nt = torch.bincount(yt, minlength=Lt).to(fs.dtype)
    within_s = _class_sums(fs, ys, Ls, fs, ys, Ls, gammas, w, True) / (ns * (ns - 1))
    within_t = _class_sums(ft, yt, Lt, ft, yt, Lt, gammas, w, True) / (nt * (nt - 1))
    cross = _class_sums(fs, ys, Ls, ft, yt, Lt, gammas, w, False) / (ns[:, None] * nt[None, :])
    return within_s[:, None] + within_t[None, :] - 2 * cross

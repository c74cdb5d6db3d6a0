"""Pixel-wise H-scores for dense tasks (paper section 5.2).

Features f (N, d) are shared by all pixels; label maps (N, P) give each pixel's class.
Whiten once, g = L^{-1} (f - mean) with cov(f) = L L^T, so cov(g) = I and for every pixel
H_p = sum_c ||S_pc||^2 / (N n_pc), S_pc = sum_{n: y_np = c} g_n (Definition 2 with the
identity covariance). The class sums come from a segment-sum kernel: O(N d^2 + N P d) time,
no dense one-hot GEMM, memory O(P C) plus one pixel block of labels.
"""

from __future__ import annotations

import torch

from pytransfer import _checks, _dispatch
from pytransfer.hscore import _ops
from pytransfer.hscore.stats import HScoreStats, check_labels, check_num_classes


def check_label_maps(label_maps: object, n: int, num_classes: int) -> torch.Tensor:
    _checks.tensor("label_maps", label_maps)
    _checks.ndim("label_maps", label_maps, (2,))
    return check_labels("label_maps", label_maps, n, num_classes)


def pixelwise_h_score(
    features: torch.Tensor, label_maps: torch.Tensor, num_classes: int, *,
    shrinkage: float | str | None = None, backend: str = "auto",
) -> torch.Tensor:
    """H-score of shared features (N, d) for each pixel of label maps (N, P) -> (P,) float64.

    Classes absent at a pixel contribute nothing there. ``shrinkage`` as in ``h_score``.
    """
    _checks.floating("features", features)
    _checks.ndim("features", features, (2,))
    check_num_classes(num_classes)
    N, d = features.shape
    if d == 0:
        raise ValueError("features must have d >= 1 columns, got d = 0")
    label_maps = check_label_maps(label_maps, N, num_classes)
    P = label_maps.shape[1]
    # (P, C) squared sums and counts, and the segment kernel's (pixel group, C, d) sums
    _checks.fits(f"pixelwise_h_score with P={P} pixels, num_classes={num_classes}, d={d}",
                 8 * (2 * P * num_classes + 16 * torch.get_num_threads() * num_classes * d),
                 features.device)
    _checks.same_device(features=features, label_maps=label_maps)
    name, segment = _dispatch.resolve(_ops.OP_SEGMENT, backend, features.device.type)
    stats = HScoreStats(d, num_classes, device=features.device,
                        backend="reference" if name == "reference" else "auto")
    with torch.no_grad():
        stats.update(features, torch.zeros(N, dtype=torch.long, device=features.device))
        mean, _ = stats.covariance()
        L = stats.cholesky(shrinkage)[0]
        g = torch.linalg.solve_triangular(L, (features.double() - mean).T, upper=False).T
        if name == "triton" and features.dtype != torch.float64:
            g = g.float()
        sq, counts = segment(g.contiguous(), label_maps, num_classes)
    return (sq / counts.clamp(min=1)).sum(-1) / N

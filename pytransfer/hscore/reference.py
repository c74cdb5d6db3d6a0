"""The H-score in plain float64 PyTorch: the specification the kernels are tested against.

Definition 2 of Bao et al. (ICLR 2019 submission, ``h_score_transferability.txt``):
H(f) = tr(cov(f)^{-1} cov(E[f | Y])), both covariances with the 1/N normaliser. With
cov(f) = L L^T and class means m_c, overall mean m:
H(f) = sum_c (n_c / N) ||L^{-1} (m_c - m)||^2 (absent classes contribute nothing).
Everything here is two-pass, unchunked and differentiable.
"""

from __future__ import annotations

import torch


def shrink(cov: torch.Tensor, shrinkage: torch.Tensor | float) -> torch.Tensor:
    """(1 - s) cov + s (tr cov / d) I for (..., d, d) covariances and s of shape (...) or float."""
    d = cov.shape[-1]
    s = torch.as_tensor(shrinkage, dtype=cov.dtype, device=cov.device)[..., None, None]
    mu = torch.diagonal(cov, dim1=-2, dim2=-1).sum(-1)[..., None, None] / d
    eye = torch.eye(d, dtype=cov.dtype, device=cov.device)
    return (1 - s) * cov + s * mu * eye


def ledoit_wolf_reference(x: torch.Tensor) -> torch.Tensor:
    """Ledoit-Wolf shrinkage intensity of the rows of ``x`` (..., N, d), sklearn's formula."""
    x = x.double()
    n, d = x.shape[-2:]
    x = x - x.mean(-2, keepdim=True)
    cov = x.mT @ x / n
    mu = torch.diagonal(cov, dim1=-2, dim2=-1).sum(-1) / d
    beta_ = (x.square().sum(-1) ** 2).sum(-1)
    delta_ = cov.square().sum((-2, -1))
    beta = (beta_ / n - delta_) / (d * n)
    delta = (delta_ - 2 * mu * mu * d + d * mu * mu) / d
    beta = torch.minimum(beta, delta)
    return torch.where(beta == 0, torch.zeros_like(beta), beta / delta)


def class_scatter(z: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple:
    """Per-class counts (C,) and sums (..., C, d) of the rows of z by a one-hot product."""
    onehot = torch.nn.functional.one_hot(labels, num_classes).to(z.dtype)
    return onehot.sum(0), onehot.T @ z


def h_score_reference(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    shrinkage: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """H-score of (N, d) or (T, N, d) features in float64; differentiable."""
    f = features.double()
    n = f.shape[-2]
    z = f - f.mean(-2, keepdim=True)
    cov = z.mT @ z / n
    if shrinkage is not None:
        cov = shrink(cov, shrinkage)
    counts, sums = class_scatter(z, labels, num_classes)
    present = counts > 0
    diff = sums[..., present, :] / counts[present, None]  # m_c - m (z is centered)
    L = torch.linalg.cholesky(cov)
    w = torch.linalg.solve_triangular(L, diff.mT, upper=False)  # (..., d, C')
    return (w.square().sum(-2) * counts[present] / n).sum(-1)


def stats_reference(
    features: torch.Tensor, labels: torch.Tensor, shift: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, ...]:
    """Shifted sufficient statistics of (T, N, d) features, z = f - shift, in float64:
    (sum z (T, d), sum z z^T (T, d, d), class sums (T, C, d), sum ||z||^2 z (T, d),
    sum ||z||^4 (T,))."""
    z = features.double() - shift[:, None, :]
    r = z.square().sum(-1)
    _, sums = class_scatter(z, labels, num_classes)
    return z.sum(1), z.mT @ z, sums, (r[..., None] * z).sum(1), r.square().sum(1)


def segment_sq_reference(
    g: torch.Tensor, label_maps: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """For every pixel p and class c: ||sum_{n: y_np = c} g_n||^2 and n_pc, both (P, C)."""
    onehot = torch.nn.functional.one_hot(label_maps.T.long(), num_classes).to(g.dtype)
    sums = onehot.mT @ g  # (P, C, d)
    return sums.square().sum(-1), onehot.sum(1)


def pixelwise_h_score_reference(
    features: torch.Tensor, label_maps: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """H-score of shared (N, d) features for each pixel's labels (N, P): a loop over pixels."""
    return torch.stack([
        h_score_reference(features, label_maps[:, p], num_classes)
        for p in range(label_maps.shape[1])
    ])

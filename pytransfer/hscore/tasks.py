"""Transferability, source selection and task structure (Definitions 3-4, section 5.2)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from pytransfer import _checks
from pytransfer.hscore.pixelwise import pixelwise_h_score
from pytransfer.hscore.stats import h_score

#: an optimal H-score below this (relative to its maximum C - 1) is zero: no ratio exists
ZERO_H_RTOL = 1e-9


def _classes(name: str, labels: object) -> int:
    """num_classes = max + 1 of non-empty integer labels."""
    _checks.tensor(name, labels)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer labels, got {labels.dtype}")
    if labels.numel() == 0:
        raise ValueError(f"{name} is empty: no labels to score")
    return int(labels.max()) + 1


def transferability(f_source: torch.Tensor, y_target: torch.Tensor,
                    f_target_opt: torch.Tensor, *, shrinkage: float | str | None = None,
                    ) -> torch.Tensor:
    """T(S, T) = H_T(f_S) / H_T(f_T,opt) (Definition 3), both scored on the target labels.
    An optimal H-score of 0 (features that carry nothing about the labels) is an error."""
    num_classes = _classes("y_target", y_target)
    den = h_score(f_target_opt, y_target, num_classes=num_classes, shrinkage=shrinkage)
    if bool((den <= ZERO_H_RTOL * (num_classes - 1)).any()):
        raise ValueError(f"H_T(f_target_opt) = {den.min().item():.3g} is 0: f_target_opt "
                         f"carries no information about y_target, so T(S, T) is undefined")
    return h_score(f_source, y_target, num_classes=num_classes, shrinkage=shrinkage) / den


def rank_sources(candidates: Mapping[str, torch.Tensor], y_target: torch.Tensor, *,
                 shrinkage: float | str | None = None) -> list[tuple[str, float]]:
    """Source selection (Definition 4): (name, H_T(f_S)) best first.

    Candidates of one shape are scored in one batched call.
    """
    if not candidates:
        raise ValueError("candidates must name at least one feature set")
    num_classes = _classes("y_target", y_target)
    names = list(candidates)
    shapes = {tuple(_checks.tensor(f"candidates[{k!r}]", v).shape) for k, v in candidates.items()}
    if len(shapes) == 1:
        scores = h_score(torch.stack([candidates[k] for k in names]), y_target,
                         num_classes=num_classes, shrinkage=shrinkage).tolist()
    else:
        scores = [float(h_score(candidates[k], y_target, num_classes=num_classes,
                                shrinkage=shrinkage)) for k in names]
    return sorted(zip(names, scores), key=lambda kv: -kv[1])


def quantize_label_maps(maps: torch.Tensor, k: int = 16, *, seed: int = 0,
                        max_fit: int = 100_000) -> torch.Tensor:
    """Continuous dense outputs (N, P) or (N, P, channels) -> (N, P) labels in [0, k).

    k-means (scikit-learn) over pixel values, fitted on at most ``max_fit`` sampled values:
    the paper's 16-colour palette before the pixel-wise H-score (section 5.2).
    """
    from sklearn.cluster import KMeans

    _checks.floating("maps", maps)
    _checks.ndim("maps", maps, (2, 3))
    _checks.positive_int("k", k)
    _checks.finite("maps", maps)
    N, P = maps.shape[:2]
    values = maps.reshape(N * P, -1).double().cpu().numpy()
    rng = np.random.default_rng(seed)
    fit = values[rng.choice(len(values), max_fit, replace=False)] if len(values) > max_fit \
        else values
    km = KMeans(n_clusters=min(k, len(np.unique(fit, axis=0))), n_init=3, random_state=seed)
    km.fit(fit)
    return torch.from_numpy(km.predict(values).astype(np.int64)).reshape(N, P)


def transferability_matrix(source_features: Mapping[str, torch.Tensor] | Sequence[torch.Tensor],
                           target_labels: Mapping[str, torch.Tensor] | Sequence[torch.Tensor],
                           *, shrinkage: float | str | None = None) -> torch.Tensor:
    """(S, T) H-scores H_t(f_s); dense targets (N, P) are scored pixel-wise and averaged
    over the image (section 5.2)."""
    feats = list(source_features.values() if isinstance(source_features, Mapping)
                 else source_features)
    targets = list(target_labels.values() if isinstance(target_labels, Mapping)
                   else target_labels)
    out = torch.empty(len(feats), len(targets), dtype=torch.float64)
    for j, y in enumerate(targets):
        C = _classes(f"target_labels[{j}]", y)
        for i, f in enumerate(feats):
            if y.dim() == 2:
                out[i, j] = pixelwise_h_score(f, y, C, shrinkage=shrinkage).mean()
            else:
                out[i, j] = h_score(f, y, num_classes=C, shrinkage=shrinkage)
    return out


def cluster_tasks(matrix: torch.Tensor, n_clusters: int = 2, *, method: str = "average",
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Agglomerative clustering of target tasks (section 5.2): each target is the vector of
    its H-scores over the sources (a column of the (S, T) matrix), scaled by its maximum.

    Returns (cluster labels (T,) in 1..n_clusters, scipy linkage matrix for a dendrogram).
    """
    from scipy.cluster.hierarchy import fcluster, linkage

    _checks.floating("matrix", matrix)
    _checks.ndim("matrix", matrix, (2,))
    _checks.positive_int("n_clusters", n_clusters)
    if matrix.shape[1] < 2:
        raise ValueError(f"need at least 2 target tasks to cluster, got {matrix.shape[1]}")
    vecs = matrix.T.double().cpu().numpy()
    vecs = vecs / np.abs(vecs).max(1, keepdims=True).clip(min=1e-300)
    Z = linkage(vecs, method=method)
    return fcluster(Z, n_clusters, criterion="maxclust"), Z

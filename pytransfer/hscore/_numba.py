"""Numba kernel of the pixel-wise segment sum (CPU backend of ``hscore_segment_sq``)."""

from __future__ import annotations

import numba
import numpy as np

#: pixels sharing one read of each feature row: their (group, C, d) sums stay in cache
GROUP = 16


@numba.njit(parallel=True, cache=True, fastmath=False)
def segment_sq(g, labels, num_classes, sq, counts):  # pragma: no cover - compiled
    """sq[p, c] = ||sum_{n: labels[n, p] = c} g[n]||^2, counts[p, c] = n_pc.

    g (N, d) float64, labels (N, P) int64 (a pixel block), outputs (P, C) float64.
    Threads own disjoint groups of GROUP pixels; each row g[n] is read once per group.
    """
    N, d = g.shape
    P = labels.shape[1]
    groups = (P + GROUP - 1) // GROUP
    for b in numba.prange(groups):
        p0 = b * GROUP
        p1 = min(P, p0 + GROUP)
        S = np.zeros((p1 - p0, num_classes, d))
        for n in range(N):
            for p in range(p0, p1):
                c = labels[n, p]
                counts[p, c] += 1.0
                row = S[p - p0, c]
                for k in range(d):
                    row[k] += g[n, k]
        for p in range(p0, p1):
            for c in range(num_classes):
                acc = 0.0
                for k in range(d):
                    acc += S[p - p0, c, k] * S[p - p0, c, k]
                sq[p, c] = acc

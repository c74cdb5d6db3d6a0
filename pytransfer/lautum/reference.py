"""The closed form of the Gaussian Lautum information in its canonical correlations."""

from __future__ import annotations

import torch


def lautum_from_correlations(rho: torch.Tensor) -> torch.Tensor:
    """sum_k [rho_k^2 / (1 - rho_k^2) + 1/2 log(1 - rho_k^2)] = KL(P_U x P_V || P_UV) for
    jointly Gaussian U, V with canonical correlations ``rho`` (each in [0, 1))."""
    r2 = rho.square()
    return (r2 / (1 - r2) + 0.5 * torch.log1p(-r2)).sum(-1)

"""Lautum information estimators (the Lautum regularisation paper, eq. 2).

``gaussian_lautum(u, v)``: the Lautum information of jointly Gaussian views from one batch
covariance, by Cholesky factors; ``LautumEstimator``: the ``(u, v) -> scalar`` protocol any
estimator passed to ``pytransfer.nn.LautumLoss`` follows.
"""

from pytransfer.lautum.gaussian import (
    LautumEstimator,
    gaussian_lautum,
    lautum_from_covariance,
)
from pytransfer.lautum.reference import lautum_from_correlations

__all__ = ["LautumEstimator", "gaussian_lautum", "lautum_from_correlations",
           "lautum_from_covariance"]

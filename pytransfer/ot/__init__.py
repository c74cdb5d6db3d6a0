"""Optimal transport: batched log-domain Sinkhorn (``sinkhorn``) between histograms, and
point-cloud Sinkhorn (``sinkhorn_points``, ``sample_coupling``, ``class_pair_ot``)."""

from pytransfer.ot.points import PointSinkhornResult, sinkhorn_points
from pytransfer.ot.points_classes import class_pair_ot
from pytransfer.ot.points_sampling import sample_coupling
from pytransfer.ot.sinkhorn import SinkhornResult, sinkhorn

__all__ = ["PointSinkhornResult", "SinkhornResult", "class_pair_ot", "sample_coupling",
           "sinkhorn", "sinkhorn_points"]

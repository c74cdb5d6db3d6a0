"""Optimal transport: batched log-domain Sinkhorn (``sinkhorn``) and its result type."""

from pytransfer.ot.sinkhorn import SinkhornResult, sinkhorn

__all__ = ["SinkhornResult", "sinkhorn"]

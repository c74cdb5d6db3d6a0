"""``pytransfer.hscore``: H-score transferability (Bao et al., ``h_score_transferability.txt``).

Streaming, mergeable statistics and batched scoring (Definition 2), pixel-wise scores for
dense tasks (section 5.2), transferability and source selection (Definitions 3-4), the
optimal H-score by ACE (Appendix B) and task clustering (section 5.2).
"""

from pytransfer.hscore.ace import optimal_h_score
from pytransfer.hscore.pixelwise import pixelwise_h_score
from pytransfer.hscore.stats import HScoreStats, h_score
from pytransfer.hscore.tasks import (
    cluster_tasks,
    quantize_label_maps,
    rank_sources,
    transferability,
    transferability_matrix,
)

__all__ = [
    "HScoreStats",
    "cluster_tasks",
    "h_score",
    "optimal_h_score",
    "pixelwise_h_score",
    "quantize_label_maps",
    "rank_sources",
    "transferability",
    "transferability_matrix",
]

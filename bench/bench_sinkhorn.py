"""pytest-benchmark suite of the sinkhorn workloads (``pytransfer.bench.sinkhorn``): every
implementation timed, its output checked against the float64 reference.

    pytest bench/bench_sinkhorn.py --benchmark-enable  # PYTRANSFER_BENCH_SIZE=full: full sizes
"""

from bench.common import suite
from pytransfer.bench.sinkhorn import plain_scaling_loop as _plain_scaling_loop
from pytransfer.bench.sinkhorn import problem

test_sinkhorn = suite("sinkhorn")

__all__ = ["_plain_scaling_loop", "problem", "test_sinkhorn"]  # bench_losses uses both

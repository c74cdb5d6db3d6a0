"""pytest-benchmark suite of the sinkhorn workloads (``pytransfer.bench.sinkhorn``): every
implementation timed, its output checked against the float64 reference.

    pytest bench/bench_sinkhorn.py --benchmark-enable  # PYTRANSFER_BENCH_SIZE=full: full sizes
"""

from bench.common import suite

test_sinkhorn = suite("sinkhorn")

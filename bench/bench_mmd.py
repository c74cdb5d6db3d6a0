"""pytest-benchmark suite of the mmd workloads (``pytransfer.bench.mmd``): every
implementation timed, its output checked against the float64 reference.

    pytest bench/bench_mmd.py --benchmark-enable  # PYTRANSFER_BENCH_SIZE=full: full sizes
"""

from bench.common import suite

test_mmd = suite("mmd")

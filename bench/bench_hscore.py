"""pytest-benchmark suite of the hscore workloads (``pytransfer.bench.hscore``): every
implementation timed, its output checked against the float64 reference.

    pytest bench/bench_hscore.py --benchmark-enable  # PYTRANSFER_BENCH_SIZE=full: full sizes
"""

from bench.common import suite

test_hscore = suite("hscore")

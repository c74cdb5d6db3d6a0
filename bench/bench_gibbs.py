"""pytest-benchmark suite of the gibbs workloads (``pytransfer.bench.gibbs``): every
implementation timed, its output checked against the float64 reference.

    pytest bench/bench_gibbs.py --benchmark-enable  # PYTRANSFER_BENCH_SIZE=full: full sizes
"""

from bench.common import suite

test_gibbs = suite("gibbs")

"""pytest-benchmark suite of the point-cloud Sinkhorn workloads (``pytransfer.bench.pointcloud``,
also ``pytransfer bench --ops pointcloud``): every implementation timed, its output checked
against the float64 reference.

    pytest bench/bench_points.py --benchmark-enable  # PYTRANSFER_BENCH_SIZE=full: full sizes
"""

from bench.common import suite

test_pointcloud = suite("pointcloud")

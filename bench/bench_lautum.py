"""pytest-benchmark suite of the Lautum workloads (``pytransfer.bench.lautum``, also
``pytransfer bench --ops lautum``; ``LautumLoss`` at training sizes is in the losses op): every
implementation timed, its output checked against the float64 reference; and the issue's
float64 agreement with the plain-torch CCA anchor at B=4096, p=q=256.

    pytest bench/bench_lautum.py --benchmark-enable  # PYTRANSFER_BENCH_SIZE=full: full sizes
"""

import pytest
import torch

from bench.common import suite
from pytransfer.bench.lautum import anchor_cca_lautum, problem
from pytransfer.lautum import gaussian_lautum

test_lautum = suite("lautum")


def test_values_equal_in_float64():
    u, v = problem(4096, 256, 256, torch.float64)
    assert float(gaussian_lautum(u, v)) == pytest.approx(float(anchor_cca_lautum(u, v)),
                                                         rel=1e-6)

"""pytest-benchmark suites (``pytest bench/bench_<op>.py --benchmark-enable``): CPU kernels
are compared with one thread, as in ``pytransfer bench``."""

import pytest

from bench.common import pin_one_thread


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    pin_one_thread()

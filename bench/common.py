"""Shared pieces of the pytest-benchmark suites (``pytest bench/ --benchmark-enable``).

The workloads live in the installed package (``pytransfer.bench.<op>``, also behind
``pytransfer bench``); :func:`suite` turns an op's workloads into one benchmark per
implementation that checks the result it timed against the float64 reference. The size is
``PYTRANSFER_BENCH_SIZE`` (tiny, quick or full; default quick).
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from collections.abc import Callable

import pytest

from pytransfer.bench import load
from pytransfer.bench.workload import relative_error


def time_call(fn: Callable[[], object], rounds: int, warmup: int = 1) -> float:
    """Median wall time of ``rounds`` calls after ``warmup`` calls (seconds)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rounds):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def pin_one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def suite(op: str):
    """A test timing every implementation of every workload of ``op`` and asserting that
    its output agrees with the workload's float64 reference within the implementation's
    tolerance (implementations that compute another quantity are only timed)."""
    size = os.environ.get("PYTRANSFER_BENCH_SIZE", "quick")
    module = load(op)
    if isinstance(module, str):
        return pytest.mark.skip(reason=module)(lambda: None)
    workloads = module.workloads(size)
    params = [pytest.param(w, label, id=f"{w.name}|{label}")
              for w in workloads for label in w.runnable()]
    refs: dict[int, object] = {}

    @pytest.mark.parametrize(("workload", "label"), params)
    def test(benchmark, workload, label):
        impl = workload.runnable()[label]
        out = benchmark.pedantic(impl.fn, rounds=workload.rounds, warmup_rounds=1)
        if workload.reference is None or not impl.compare or out is None:
            return
        if id(workload) not in refs:
            refs[id(workload)] = workload.reference()
        assert relative_error(out, refs[id(workload)], impl.take) <= impl.tol
    return test

"""Shared pieces of the benchmark harness.

A bench module (``bench/bench_<op>.py``) exposes ``cases(quick: bool) -> list[Case]``. A case
holds zero-argument callables, one per implementation, all set up on the same inputs; the
report times them side by side in one run and prints ``anchor time / subject time`` for each
anchor, against the target the issue set. The same cases feed the pytest-benchmark suites.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Case:
    op: str
    name: str  # workload, e.g. "B=4096 78x22 eps=0.05 100 it fp32"
    subject: str  # label of the implementation whose speed is reported
    candidates: dict[str, Callable[[], object]]  # label -> callable (subject included)
    targets: dict[str, float] = field(default_factory=dict)  # anchor -> required speed-up
    # Non-time figures (iteration counts, memory, time fractions):
    # name -> (value, target, ">=" | "<=")
    metrics: Callable[[], dict[str, tuple[float, float | None, str]]] | None = None
    rounds: int = 3
    # label -> factor: a candidate timed on a subset of the workload (e.g. a slow per-problem
    # loop) is scaled to the full workload; the factor is shown in its label.
    scale: dict[str, float] = field(default_factory=dict)


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

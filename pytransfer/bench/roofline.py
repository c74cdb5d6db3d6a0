"""This machine's limits, measured in the same run as the kernels (the roofline model of
Williams, Waterman and Patterson, "Roofline: an insightful visual performance model for
multicore architectures", with exponentials as a third ceiling), and how close a kernel gets.
"""

from __future__ import annotations

import torch

from pytransfer.bench.timing import time_call
from pytransfer.bench.workload import Work

EXP_ELEMENTS = 1 << 20  # 4 MiB of float32: exp throughput, not memory, is measured
GEMM_SIZE = 512  # three 1 MiB float32 matrices: cache-friendly
COPY_ELEMENTS = 1 << 24  # 64 MiB of float32 read and written: far beyond the caches


def measure(device: str = "cpu", rounds: int = 7) -> dict[str, float]:
    """Peak rates at the current thread count: ``exp_per_s`` (vectorised torch.exp over a
    float32 array), ``flop_per_s`` (torch.mm, float32, square) and ``bytes_per_s`` (a float32
    copy, counting the bytes read and written)."""
    gen = torch.Generator().manual_seed(0)

    def rate(fn) -> float:  # the best of the rounds: contention only ever slows a call
        fn()  # warm-up
        return min(time_call(fn, 1, device) for _ in range(rounds))

    x = torch.rand(EXP_ELEMENTS, generator=gen).to(device)
    y = torch.empty_like(x)
    t_exp = rate(lambda: torch.exp(x, out=y))
    a = torch.rand(GEMM_SIZE, GEMM_SIZE, generator=gen).to(device)
    b, c = torch.rand_like(a), torch.empty_like(a)
    t_mm = rate(lambda: torch.mm(a, b, out=c))
    src = torch.rand(COPY_ELEMENTS, generator=gen).to(device)
    dst = torch.empty_like(src)
    t_copy = rate(lambda: dst.copy_(src))
    return {"exp_per_s": EXP_ELEMENTS / t_exp, "flop_per_s": 2 * GEMM_SIZE**3 / t_mm,
            "bytes_per_s": 2 * 4 * COPY_ELEMENTS / t_copy}


def attainment(work: Work, seconds: float, peaks: dict[str, float]) -> dict[str, object]:
    """The bound that applies (the resource whose peak would take longest for this work) and
    the achieved fraction of it: that shortest possible time over the measured time."""
    limits = {"exp": work.exps / peaks["exp_per_s"], "GEMM": work.flops / peaks["flop_per_s"],
              "memory": work.bytes / peaks["bytes_per_s"]}
    bound = max(limits, key=limits.get)
    return {"bound": bound, "fraction": limits[bound] / seconds,
            "flop_per_s": work.flops / seconds, "bytes_per_s": work.bytes / seconds,
            "exp_per_s": work.exps / seconds,
            "intensity": work.flops / work.bytes if work.bytes else None}

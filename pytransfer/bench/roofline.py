"""This machine's limits, measured in the same run as the kernels (the roofline model of
Williams, Waterman and Patterson, "Roofline: an insightful visual performance model for
multicore architectures", with exponentials as a third ceiling), and how close a kernel gets.

The exp ceiling is the faster of torch.exp and the C++ kernels' own vectorised exp (the one
their inner loops call), each alone over an array: no kernel that also loads, adds and takes
maxima can beat it, so a fraction above 100 % means a miscounted :class:`Work`, not a fast
kernel.
"""

from __future__ import annotations

import torch

from pytransfer import _ext
from pytransfer.bench.timing import time_call
from pytransfer.bench.workload import Work

EXP_ELEMENTS = 1 << 20  # 4 MiB of float32: exp throughput, not memory, is measured
VEXP_ELEMENTS = 1 << 14  # 64 KiB of float32 read and written: stays in the L2 cache
VEXP_PASSES = 64  # passes over it per call: 1 Mi exps, no per-call overhead to speak of
GEMM_SIZE = 512  # three 1 MiB float32 matrices: cache-friendly
COPY_ELEMENTS = 1 << 24  # 64 MiB of float32 read and written: far beyond the caches


def vexp(x: torch.Tensor, passes: int = 1) -> torch.Tensor:
    """exp(x) (float32 or float64, CPU) by the C++ kernels' own vectorised exp: a Cody-Waite
    reduction and a polynomial, arguments clamped to keep results normal (about e^-80 to e^80
    in float32, e^-700 to e^700 in float64); ``passes`` times over the same array."""
    x = x.flatten()
    n = x.numel()
    y = _ext.out(x.dtype, n)
    _ext.call("exp_throughput", x.dtype, _ext.src(x, n), y, n, passes)
    return y.tensor


def measure(device: str = "cpu", rounds: int = 7) -> dict[str, float]:
    """Peak rates at the current thread count: ``flop_per_s`` (torch.mm, float32, square),
    ``bytes_per_s`` (a float32 copy, counting the bytes read and written) and ``exp_per_s``,
    the faster of ``exp_torch_per_s`` (torch.exp over a float32 array) and, on the CPU with
    the extension built, ``exp_vexp_per_s``: the C++ kernels' own vectorised float32 exp
    (:func:`vexp`), which they use instead of torch.exp and which is faster than it, so the
    exp bound is a ceiling for them too. Float64 kernels are held to the float32 exp rate,
    which they cannot exceed."""
    gen = torch.Generator().manual_seed(0)

    def rate(fn) -> float:  # the best of the rounds: contention only ever slows a call
        fn()  # warm-up
        return min(time_call(fn, 1, device) for _ in range(rounds))

    x = torch.rand(EXP_ELEMENTS, generator=gen).to(device)
    y = torch.empty_like(x)
    peaks = {"exp_torch_per_s": EXP_ELEMENTS / rate(lambda: torch.exp(x, out=y))}
    if device == "cpu" and _ext.unavailable() is None:
        v = torch.rand(VEXP_ELEMENTS, generator=gen) * 20 - 10
        t = rate(lambda: vexp(v, VEXP_PASSES))
        peaks["exp_vexp_per_s"] = VEXP_ELEMENTS * VEXP_PASSES / t
    peaks["exp_per_s"] = max(peaks.values())
    a = torch.rand(GEMM_SIZE, GEMM_SIZE, generator=gen).to(device)
    b, c = torch.rand_like(a), torch.empty_like(a)
    t_mm = rate(lambda: torch.mm(a, b, out=c))
    src = torch.rand(COPY_ELEMENTS, generator=gen).to(device)
    dst = torch.empty_like(src)
    t_copy = rate(lambda: dst.copy_(src))
    return {**peaks, "flop_per_s": 2 * GEMM_SIZE**3 / t_mm,
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

"""Wall time, peak memory and thread count of one call."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


#: rounds the timed calls of a workload's implementations alternate in (time_alternated)
ALTERNATIONS = 5


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """As timeit: no collection pauses inside a timed call."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _calls(fn: Callable[[], object], count: int, device: str, times: list[float]) -> None:
    for _ in range(count):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)


def time_call(fn: Callable[[], object], rounds: int, device: str = "cpu") -> float:
    """Median wall time (seconds) of ``rounds`` calls (the caller has warmed ``fn`` up)."""
    times: list[float] = []
    with _no_gc():
        _calls(fn, max(rounds, 1), device, times)
    return statistics.median(times)


def time_alternated(plan: dict[str, tuple[Callable[[], object], int]], device: str = "cpu",
                    rounds: int = ALTERNATIONS) -> tuple[dict[str, float], dict[str, Exception]]:
    """Median wall time (seconds) of each entry's ``calls`` of ``fn`` (``plan``: label ->
    (fn, calls), each warmed up), the calls split over ``rounds`` rounds in which the entries
    take turns: on a shared machine a slow spell then reaches every entry alike, not only
    the one timed in it, so the ratios between them hold steadier than their times; and no
    entry runs only back to back with itself, its code and data hot in the caches (between
    the steps of a training loop they are not). (the times, the exception of each entry that
    raised, which is not called again)"""
    times: dict[str, list[float]] = {label: [] for label in plan}
    failed: dict[str, Exception] = {}
    with _no_gc():
        for r in range(rounds):
            for label, (fn, calls) in plan.items():
                share = calls * (r + 1) // rounds - calls * r // rounds
                if label in failed or share == 0:
                    continue
                try:
                    _calls(fn, share, device, times[label])
                except (RuntimeError, MemoryError, ValueError) as exc:
                    failed[label] = exc
    return ({label: statistics.median(t) for label, t in times.items()
             if t and label not in failed}, failed)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def _trim() -> None:
    """Return the C heap's free memory to the system (glibc), so that a call's allocations
    show in the resident size."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def call_with_peak(fn: Callable[[], object], device: str = "cpu") -> tuple[object, float | None]:
    """``fn()`` and the peak memory it added (MiB) above what was in use before: CUDA
    ``max_memory_allocated`` on the GPU; on Linux CPUs the resident high-water mark (VmHWM,
    reset through /proc/self/clear_refs) after glibc has returned its free memory to the
    system. None where neither is available."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        out = fn()
        torch.cuda.synchronize()
        return out, (torch.cuda.max_memory_allocated() - before) / 2**20
    _trim()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_kib("VmRSS")
    except OSError:
        return fn(), None
    out = fn()
    return out, max(_status_kib("VmHWM") - before, 0) / 1024


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` threads in torch, in the BLAS and OpenMP pools NumPy and SciPy
    use (threadpoolctl, where installed) and in numba (where installed)."""
    old = torch.get_num_threads()
    try:
        import numba
    except ImportError:
        numba = None
    old_nb = numba.get_num_threads() if numba is not None else None
    torch.set_num_threads(n)
    if numba is not None:
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        pools = contextlib.nullcontext()
    else:
        pools = threadpool_limits(limits=n)
    try:
        with pools:
            yield
    finally:
        torch.set_num_threads(old)
        if numba is not None and old_nb is not None:
            numba.set_num_threads(old_nb)

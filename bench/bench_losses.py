"""Drop-in losses at training sizes (issue 13), 1 thread, fp32, forward + backward.

Every workload is a plain function returning zero-argument callables set up on the same
inputs; each callable returns the value it computed, and the benchmarks assert that ours
equals the hand-written one. Ratios are hand-written time / ours, measured in one run.

- ``OTLoss(C, eps=0.1, max_iter=100, tol=0)`` vs the 15-line hand-written loop (scaling-form
  Sinkhorn, 100 iterations, the dual gradients of JTLN eq. 11 passed to ``autograd.backward``)
  at B=128 5x5, B=128 78x22, B=512 78x22. Target >= 3x.
- ``sinkhorn(method="auto")`` vs the plain two-matmul loop (``pytransfer.bench.sinkhorn``'s
  workload, 78x22, eps=0.05) at B = 256, 1024, 4096 (and 65536 in full runs). Target >= 1x.
- ``MKMMDLoss`` (linear, 19 kernels) vs a hand-written O(n d) torch estimator at n=64 d=256,
  n=128 d=1024, n=256 d=2048. Target >= 2x at n=64 d=256.
- Whole-call overhead: ``OTLoss`` at B=1, 2x2 and ``MKMMDLoss`` at n=64, d=8 (target: wrapper,
  validation and dispatch <= 50 us); ``ot_breakdown_us`` splits an OTLoss call (B=1 2x2 and
  B=128 5x5) into autograd's fixed cost, the C++ kernel, the C++ check and the rest.
- ``HScore`` vs the hand-written soft-HGR expression.
- ``losses_table()``: the Liger-Kernel-style table (time and peak memory vs hand-written).

    python -m bench.bench_losses [--quick]           # the table and the ratios
    pytest bench/bench_losses.py --benchmark-enable   # pytest-benchmark suite
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

import pytest
import torch

from bench.common import pin_one_thread
from pytransfer.bench.losses import (
    hscore_workload,
    mmd_workload,
    ot_inputs,
    ot_workload,
)
from pytransfer.bench.sinkhorn import EPS, ITERS
from pytransfer.bench.sinkhorn import plain_scaling_loop as _plain_scaling_loop
from pytransfer.bench.sinkhorn import problem as sinkhorn_problem
from pytransfer.nn import OTLoss
from pytransfer.ot import sinkhorn

OT_EPS, OT_ITERS = 0.1, 100
OT_SIZES = ((128, 5, 5), (128, 78, 22), (512, 78, 22))
AUTO_SIZES = (256, 1024, 4096)
AUTO_SIZES_FULL = (*AUTO_SIZES, 65536)
MMD_SIZES = ((64, 256), (128, 1024), (256, 2048))
U = 19


# ------------------------------------------------------------------ OTLoss
def overhead_workload() -> dict:
    """A whole OTLoss call at B=1, 2x2 (forward + backward) and the bare loop it wraps."""
    return ot_workload(1, 2, 2)


def ot_breakdown_us(B: int = 1, n: int = 2, m: int = 2, rounds: int = 400) -> dict[str, float]:
    """What one OTLoss forward + backward from logits costs (us, interleaved medians):
    ``whole``; ``bare``, the same softmax + mean + backward without the loss (autograd's
    fixed cost); ``kernel``, the C++ solve alone (raw call, outputs preallocated); ``check``,
    the C++ value check alone; ``forward``, the loss forward without autograd (from
    probabilities); ``hand-written``. ``overhead`` = whole - bare - kernel: wrapper,
    validation (check included), dispatch, allocations and the backward node (issue 13's
    fixed per-call cost at B=1 2x2)."""
    from pytransfer.ot import block

    pin_one_thread()
    ls, lt, cost = ot_inputs(B, n, m)
    pt, loss = lt.softmax(-1), OTLoss(cost, eps=OT_EPS, max_iter=OT_ITERS, tol=0.0)
    hand = ot_workload(B, n, m)["hand-written"]

    def whole():
        x = ls.detach().requires_grad_(True)
        loss(x.softmax(-1), pt).backward()

    def bare():
        x = ls.detach().requires_grad_(True)
        x.softmax(-1)[:, 0].mean().backward()

    a, c = ls.softmax(-1), cost[None].contiguous()
    kernel, _ = block.bound(a, pt, c, OT_EPS, OT_ITERS, 0.0)  # the C++ call alone

    def check():
        block.check(a, pt, c, 1e-5)

    def forward():
        loss(a, pt)

    t = interleaved({"whole": whole, "bare": bare, "kernel": kernel, "check": check,
                     "forward": forward, "hand-written": hand}, rounds, warmup=20)
    return {k: 1e6 * v for k, v in t.items()} | {
        "overhead": 1e6 * (t["whole"] - t["bare"] - t["kernel"])}


# ------------------------------------------------------------------ sinkhorn(auto)
def auto_workload(B: int) -> dict:
    """{"ours", "plain"}: sinkhorn(auto) and the plain two-matmul loop; both return the
    transport costs (pytransfer.bench.sinkhorn's 78x22, eps=0.05, 100 iterations)."""
    a, b, cost = sinkhorn_problem(B)
    return {"ours": lambda: sinkhorn(a, b, cost, EPS, max_iter=ITERS, tol=0.0).transport_cost,
            "plain": _plain_scaling_loop(a, b, cost)}


def log_kernel_workload(B: int) -> dict:
    """{"ours", "reference"}: the C++ log-domain kernel and the torch reference (issue 3)."""
    a, b, cost = sinkhorn_problem(B)

    def run(backend):
        return lambda: sinkhorn(a, b, cost, EPS, max_iter=ITERS, tol=0.0, method="log",
                                backend=backend).transport_cost
    return {"ours": run("cpu"), "reference": run("reference")}


# ------------------------------------------------------------------ MK-MMD
# ------------------------------------------------------------------ the losses table
TABLE_ROWS = {
    "OTLoss B=128 5x5": lambda: ot_workload(128, 5, 5),
    "OTLoss B=128 78x22": lambda: ot_workload(128, 78, 22),
    "OTLoss B=512 78x22": lambda: ot_workload(512, 78, 22),
    "MKMMDLoss n=64 d=256": lambda: mmd_workload(64, 256),
    "MKMMDLoss n=256 d=2048": lambda: mmd_workload(256, 2048),
    "HScore n=256 k=64": lambda: hscore_workload(256, 64),
}

_MEM_SCRIPT = """
import json, sys, torch
torch.set_num_threads(1)
from bench.bench_losses import TABLE_ROWS
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
fn = TABLE_ROWS[sys.argv[1]]()[sys.argv[2]]
fn()  # lazy initialisation and allocator warm-up off the books
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
before = status("VmRSS")
fn()
print(json.dumps({"extra_bytes": status("VmHWM") - before}))
"""


def peak_extra_bytes(row: str, label: str) -> float:
    """Peak extra resident memory of one forward + backward in a fresh process whose malloc
    maps every block separately (``MALLOC_MMAP_THRESHOLD_=0``), so freed memory leaves the
    resident set and the peak counts the live bytes (each block rounded up to 4 KiB pages)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "0"}  # every block its own mapping
    out = subprocess.run([sys.executable, "-c", _MEM_SCRIPT, row, label], capture_output=True,
                         text=True, check=True, env=env)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["extra_bytes"])


def interleaved(fns: dict, rounds: int, warmup: int = 2) -> dict[str, float]:
    """Median wall time (s) per callable, the callables alternating round by round, so that
    a shared machine's load drifts affect all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def losses_table(rounds: int = 20, memory: bool = True) -> list[dict]:
    """One row per loss and size: fwd+bwd time of ours and of the hand-written torch
    equivalent (median of ``rounds``, interleaved in one run), their ratio, and peak extra
    memory."""
    pin_one_thread()
    rows = []
    for name, make in TABLE_ROWS.items():
        t = interleaved(make(), rounds)
        row = {"loss": name, "ours_ms": 1e3 * t["ours"], "hand_ms": 1e3 * t["hand-written"],
               "speedup": t["hand-written"] / t["ours"]}
        if memory:
            row["ours_MB"] = peak_extra_bytes(name, "ours") / 1e6
            row["hand_MB"] = peak_extra_bytes(name, "hand-written") / 1e6
        rows.append(row)
    return rows


def ratios(quick: bool = True, rounds: int = 20) -> list[tuple[str, float, float | None, float]]:
    """(workload, hand-written or plain time / ours, target, our time in us) for every
    issue-13 figure."""
    pin_one_thread()
    out = []

    def add(name, fns, target, anchor="hand-written", r=rounds):
        t = interleaved(fns, r)
        out.append((name, t[anchor] / t["ours"], target, 1e6 * t["ours"]))

    for B, n, m in OT_SIZES:
        add(f"OTLoss fwd+bwd B={B} {n}x{m}", ot_workload(B, n, m), 3.0)
    for B in AUTO_SIZES if quick else AUTO_SIZES_FULL:
        add(f"sinkhorn(auto) B={B} 78x22", auto_workload(B), 1.0, "plain",
            r=max(3, rounds // (1 + B // 1024)))
    for n, d in MMD_SIZES:
        add(f"MKMMDLoss fwd+bwd n={n} d={d}", mmd_workload(n, d), 2.0 if n == 64 else None)
    add("OTLoss fwd+bwd B=1 2x2 (overhead)", overhead_workload(), None, r=200)
    add("MKMMDLoss fwd+bwd n=64 d=8 (overhead)", mmd_workload(64, 8), None, r=200)
    add("HScore fwd+bwd n=256 k=64", hscore_workload(), None)
    add("sinkhorn log C++ vs reference B=1024 78x22 (issue 3)", log_kernel_workload(1024), 3.0,
        "reference", r=3)
    return out


# ------------------------------------------------------------------ pytest-benchmark suite
def _check_equal(fns: dict, rtol: float = 2e-4, atol: float = 1e-6) -> None:
    ours, hand = (fns[k]() for k in fns)
    for x, y in zip(ours if isinstance(ours, tuple) else (ours,),
                    hand if isinstance(hand, tuple) else (hand,), strict=True):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol)


@pytest.mark.parametrize("B,n,m", OT_SIZES)
@pytest.mark.parametrize("label", ["ours", "hand-written"])
def test_ot_loss(benchmark, B, n, m, label):
    fns = ot_workload(B, n, m)
    _check_equal(fns)
    benchmark.pedantic(fns[label], rounds=10, warmup_rounds=2)


@pytest.mark.parametrize("B", AUTO_SIZES_FULL)
@pytest.mark.parametrize("label", ["ours", "plain"])
def test_sinkhorn_auto(benchmark, request, B, label):
    if B > 4096 and request.config.getoption("benchmark_disable", False):
        pytest.skip("B=65536 only in full (benchmark-enabled) runs")
    fns = auto_workload(B)
    _check_equal(fns, rtol=1e-4)
    benchmark.pedantic(fns[label], rounds=3, warmup_rounds=1)


@pytest.mark.parametrize("n,d", MMD_SIZES)
@pytest.mark.parametrize("label", ["ours", "hand-written"])
def test_mk_mmd_loss(benchmark, n, d, label):
    fns = mmd_workload(n, d)
    _check_equal(fns, rtol=1e-4, atol=1e-7)
    benchmark.pedantic(fns[label], rounds=10, warmup_rounds=2)


@pytest.mark.parametrize("label", ["ours", "hand-written"])
def test_overhead_ot_loss(benchmark, label):
    fns = overhead_workload()
    _check_equal(fns)
    benchmark.pedantic(fns[label], rounds=200, warmup_rounds=10)


@pytest.mark.parametrize("label", ["ours", "hand-written"])
def test_overhead_mk_mmd_loss(benchmark, label):
    fns = mmd_workload(64, 8)
    _check_equal(fns, rtol=1e-4, atol=1e-7)
    benchmark.pedantic(fns[label], rounds=200, warmup_rounds=10)


@pytest.mark.parametrize("label", ["ours", "hand-written"])
def test_hscore_loss(benchmark, label):
    fns = hscore_workload()
    _check_equal(fns, rtol=1e-5, atol=1e-6)
    benchmark.pedantic(fns[label], rounds=20, warmup_rounds=2)


def main() -> None:
    quick = "--quick" in sys.argv
    for B, n, m in ((1, 2, 2), (128, 5, 5)):
        print(f"OTLoss B={B} {n}x{m} cost breakdown (us):",
              {k: round(v, 1) for k, v in ot_breakdown_us(B, n, m).items()})
    for name, r, target, us in ratios(quick=quick):
        met = "" if target is None else (" met" if r >= target else " NOT met")
        print(f"{name:45s} {r:6.2f}x  ours {us:9.1f} us  target {target}{met}")
    for row in losses_table(memory=not quick):
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}))


if __name__ == "__main__":
    main()

"""Batched Sinkhorn on JTLN-sized problems: B x (78 x 22), eps = 0.05, exactly 100 iterations
(``tol=0``), float32 (JTLN: "Joint Transfer and Batch-mode Active Learning"-style OT loss,
eq. 10-11).

Log-domain family: the C++/Triton kernel against this package's torch reference (>= 3x), a
per-problem POT ``ot.sinkhorn2`` log-domain loop (>= 20x, timed on a subset and scaled) and
POT's batched ``ot.batch.solve_batch``. Scaling family (``method="auto"``): no slower than a
plain unstabilised two-matmul torch loop, within 2x of its GEMMs alone, >= 50x the torch
log-domain reference at B = 4096. Full runs add the early-exit and implicit-backward
figures.
"""

from __future__ import annotations

import torch

from pytransfer.bench.timing import time_call
from pytransfer.bench.workload import Impl, Target, Work, Workload
from pytransfer.ot import sinkhorn

N, M, EPS, ITERS = 78, 22, 0.05, 100
LOG_SIZES = {"tiny": (4,), "quick": (32, 128), "full": (256, 1024, 4096)}
SCALING_SIZES = {"tiny": (4,), "quick": (256, 1024), "full": (256, 4096, 65536)}
POT_LOOP = {"tiny": 2, "quick": 16, "full": 256}  # problems the POT loop is timed on
REF_SUBSET = {"tiny": 4, "quick": 128, "full": 1024}  # ... and the log reference (scaling)
GEOMLOSS = ("GeomLoss takes point clouds (SamplesLoss), not a given cost matrix: it is an "
            "anchor of the pointcloud op")
OTT = ("OTT-JAX is not in the bench extra (it pulls in JAX); a JAX/XLA anchor is not wired "
       "into this harness")
FLASH = ("flash-sinkhorn is GPU-only (Triton CUDA kernels) and takes squared-Euclidean point "
         "clouds, not a cost matrix")


def problem(B: int, seed: int = 0, dtype=torch.float32, device: str = "cpu"):
    gen = torch.Generator().manual_seed(seed)
    a = torch.rand(B, N, generator=gen, dtype=dtype) + 0.01
    b = torch.rand(B, M, generator=gen, dtype=dtype) + 0.01
    cost = torch.rand(N, M, generator=gen, dtype=dtype)
    a, b, cost = a / a.sum(-1, keepdim=True), b / b.sum(-1, keepdim=True), cost / cost.max()
    return a.to(device), b.to(device), cost.to(device)


def iterations_computed(a, b, cost, eps: float, iters: int, sample: int = 512) -> float:
    """The iterations the C++ block kernel computes at ``tol=0`` over all of the problems
    (a (B, n), b (B, m), shared cost (n, m)): each stops one iteration after its iterate repeats
    bit for bit (an exact fixed point, ``pytransfer.ot.block``), or at ``iters``; found by
    solving without the stop at every count up to ``iters`` for up to ``sample`` problems (the
    mean, times B). The roofline's work: the flops actually executed."""
    from pytransfer.ot import block

    B = a.shape[0]
    a, b, C = a[:sample].contiguous(), b[:sample].contiguous(), cost[None].contiguous()
    g = torch.stack([block.solve(a, b, C, eps, k, 0.0, fixed_stop=False)[1]
                     for k in range(1, iters + 1)])
    same = (g[1:] == g[:-1]).all(-1)  # (iters - 1, B): iterate k + 1 repeats iterate k
    first = torch.where(same.any(0), same.int().argmax(0) + 2, iters).clamp(max=iters)
    return float(first.double().mean()) * B


def _reference(a, b, cost):
    """The torch reference in float64, scaling form: the same iterates as the log domain
    (exp(-C/eps) >= e^-20 does not underflow in float64), 50x faster."""
    return lambda: sinkhorn(a.double(), b.double(), cost.double(), EPS, max_iter=ITERS, tol=0.0,
                            method="scaling", backend="reference").transport_cost


def _ours(a, b, cost, method, backend):
    return lambda: sinkhorn(a, b, cost, EPS, max_iter=ITERS, tol=0.0, method=method,
                            backend=backend).transport_cost


def _pot():
    try:
        import ot
    except ImportError:
        return None
    return ot


def _pot_loop(ot, a, b, cost, count):
    an, bn = a[:count].double().cpu().numpy(), b[:count].double().cpu().numpy()
    cn = cost.double().cpu().numpy()

    def run():
        return [float(ot.sinkhorn2(an[k], bn[k], cn, EPS, method="sinkhorn_log",
                                   numItermax=ITERS, stopThr=0.0)) for k in range(count)]
    return run


def _pot_batch(ot, a, b, cost):
    B = a.shape[0]
    costB = cost.expand(B, N, M).contiguous()

    def run():
        res = ot.batch.solve_batch(costB, EPS, a, b, max_iter=ITERS, tol=0.0,
                                   method="log_sinkhorn", grad="detach")
        return (res.plan * costB).sum((-2, -1))
    return run


def plain_scaling_loop(a, b, cost):
    """What users would write: no stabilisation, checks or early exit, then the transport
    cost <P, C> = sum_i u_i ((K o C) v)_i."""
    Kt = torch.exp(-cost / EPS).t().contiguous()
    K = Kt.t().contiguous()
    KCt = (K * cost).t().contiguous()

    def run():
        v = torch.ones_like(b)
        for _ in range(ITERS):
            u = a / (v @ Kt)
            v = b / (u @ K)
        return (u * (v @ KCt)).sum(-1)
    return run


def gemms_only(a, b, cost):
    """The two products of every iteration and nothing else: the GEMM floor."""
    K = torch.exp(-cost / EPS)
    Kt = K.t().contiguous()
    u, v = a.clone(), b.clone()

    def run():
        for _ in range(ITERS):
            torch.matmul(v, Kt, out=u)
            torch.matmul(u, K, out=v)
    return run


def _log_workload(B: int, size: str, device: str) -> Workload:
    a, b, cost = problem(B, device=device)
    backend = "cpu" if device == "cpu" else "triton"
    ours = f"pytransfer {backend} (log)"
    impls: dict[str, Impl | str] = {
        ours: Impl(_ours(a, b, cost, "log", backend), tol=1e-4),
        "pytransfer reference (torch)": Impl(_ours(a, b, cost, "log", "reference"), anchor=True,
                                             tol=1e-4),
    }
    targets = [Target("pytransfer reference (torch)", 3.0)]
    ot = _pot()
    count = min(B, POT_LOOP[size])
    loop = "POT sinkhorn2 log loop"
    if ot is None:
        impls["POT"] = "POT is not installed (pip install 'pytransfer[bench]')"
    else:
        if device == "cpu":
            impls[loop] = Impl(_pot_loop(ot, a, b, cost, count), anchor=True, scale=B / count,
                               take=count, tol=1e-4)
            targets.append(Target(loop, 20.0))
        else:
            impls[loop] = "a NumPy loop: CPU only"
        impls["POT ot.batch log_sinkhorn"] = Impl(_pot_batch(ot, a, b, cost), anchor=True,
                                                  tol=1e-4)
    impls["GeomLoss"] = GEOMLOSS
    impls["OTT-JAX"] = OTT
    impls["flash-sinkhorn"] = FLASH
    metrics = None
    if size == "full" and B == LOG_SIZES["full"][-1]:
        metrics = _full_metrics(B)
    return Workload(
        op="sinkhorn", family=f"log-domain {N}x{M}", size=B, size_name="B",
        detail=f"eps={EPS}, {ITERS} it, fp32", subject=ours, impls=impls,
        reference=_reference(a, b, cost), targets=targets, metrics=metrics,
        work=Work(flops=8.0 * ITERS * B * N * M, bytes=4.0 * (2 * B * (N + M) + N * M),
                  exps=2.0 * ITERS * B * N * M),
        rounds={"tiny": 1, "quick": 2, "full": 3}[size])


def _scaling_workload(B: int, size: str, device: str) -> Workload:
    a, b, cost = problem(B, device=device)
    ours = "pytransfer auto (scaling)"
    impls: dict[str, Impl | str] = {
        ours: Impl(lambda: sinkhorn(a, b, cost, EPS, max_iter=ITERS, tol=0.0).transport_cost,
                   tol=1e-4),
        "plain torch two-matmul loop": Impl(plain_scaling_loop(a, b, cost), anchor=True,
                                            tol=1e-4),
        "GEMMs alone": Impl(gemms_only(a, b, cost), anchor=True, compare=False),
    }
    targets = [Target("plain torch two-matmul loop", 1.0), Target("GEMMs alone", 0.5)]
    sub = min(B, REF_SUBSET[size])
    if B <= 4096:
        label = "pytransfer reference (torch, log-domain)"
        impls[label] = Impl(_ours(a[:sub], b[:sub], cost, "log", "reference"), anchor=True,
                            scale=B / sub, take=sub, tol=1e-4)
        if B == 4096:
            targets.append(Target(label, 50.0))
    else:
        impls["pytransfer reference (torch, log-domain)"] = "not timed above B=4096 (minutes)"
    detail, done = f"eps={EPS}, {ITERS} it, fp32", float(ITERS * B)
    if device == "cpu":  # the block kernel stops problems at exact fixed points
        done = iterations_computed(a, b, cost, EPS, ITERS)
        detail += f"; the kernel computes {done / B:.0f} of them on average (exact fixed points)"
    return Workload(
        op="sinkhorn", family=f"scaling (auto) {N}x{M}", size=B, size_name="B",
        detail=detail, subject=ours, impls=impls,
        reference=_reference(a, b, cost), targets=targets,
        work=Work(flops=4.0 * done * N * M, bytes=4.0 * (2 * B * (N + M) + N * M),
                  exps=float(N * M)),
        rounds={"tiny": 1, "quick": 3, "full": 3}[size])


def _full_metrics(B: int):
    def metrics():
        return {**_early_exit(B), **_implicit_backward(B)}
    return metrics


def _early_exit(B: int) -> dict:
    """Mixed easy/hard problems at tol=1e-6: iterations when every problem runs as long as
    the slowest, over the total with per-problem exit."""
    a, b, _ = problem(B, seed=1, dtype=torch.float64)
    gen = torch.Generator().manual_seed(2)
    scale = torch.where(torch.rand(B, generator=gen) < 0.5, 0.1, 1.0).double()
    cost = torch.rand(B, N, M, generator=gen, dtype=torch.float64) * scale[:, None, None]
    res = sinkhorn(a, b, cost, EPS, max_iter=10000, tol=1e-6, backend="cpu")
    saved = float(res.n_iter.max()) * B / float(res.n_iter.sum())
    return {"iterations saved by per-problem exit (slowest*B / total)": (saved, 2.0, ">=")}


def _implicit_backward(B: int) -> dict:
    """Backward time over forward time, the backward timed alone through a retained graph."""
    out = {}
    for label, cost_grad in (("d/da", False), ("d/da and d/dC", True)):
        a, b, cost = problem(B)
        a.requires_grad_(True)
        cost.requires_grad_(cost_grad)
        inputs = [a, cost] if cost_grad else [a]

        def fwd(a=a, b=b, cost=cost):
            return sinkhorn(a, b, cost, EPS, max_iter=ITERS, tol=0.0, grad="implicit",
                            method="log")
        fwd()
        t_fwd = time_call(fwd, 3)
        loss = fwd().transport_cost.sum()
        t_bwd = time_call(lambda loss=loss, inputs=inputs: torch.autograd.grad(
            loss, inputs, retain_graph=True), 5)
        out[f"implicit backward / forward ({label})"] = (t_bwd / t_fwd, 0.10, "<=")
    return out


def workloads(size: str, device: str = "cpu") -> list[Workload]:
    return ([_log_workload(B, size, device) for B in LOG_SIZES[size]]
            + [_scaling_workload(B, size, device) for B in SCALING_SIZES[size]])

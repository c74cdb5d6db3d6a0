"""Batched Sinkhorn (issues 3 and 4): JTLN-sized problems, B x (78 x 22), eps = 0.05.

Anchors in the same run: this package's reference backend, POT per-problem ``ot.sinkhorn2``
(log-domain) loop, POT ``ot.batch.solve_batch`` (log_sinkhorn). ``tol=0``: exactly 100
iterations everywhere. Targets: C++ >= 3x reference, >= 20x POT loop; early exit >= 2x fewer
iterations than stopping at the slowest problem; implicit backward <= 10% of the forward.
Issue 4 (scaling form, ``method="auto"``): >= 50x the torch log-domain reference at B=4096,
no slower than a plain unstabilised two-matmul torch loop, within 2x of the time of its GEMMs
alone; B = 256 / 4096 / 65536, iterations per second per problem reported.

    python -m bench.report sinkhorn            # report (table, JSON, PNG)
    pytest bench/bench_sinkhorn.py --benchmark-enable   # pytest-benchmark suite
"""

from __future__ import annotations

import numpy as np
import ot
import pytest
import torch

from bench.common import Case, pin_one_thread, time_call
from pytransfer.ot import sinkhorn

N, M, EPS, ITERS = 78, 22, 0.05, 100
POT_LOOP_PROBLEMS = 256  # the POT loop is timed on this many problems and scaled linearly


def problem(B: int, seed: int = 0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    a = torch.rand(B, N, generator=gen, dtype=dtype) + 0.01
    b = torch.rand(B, M, generator=gen, dtype=dtype) + 0.01
    cost = torch.rand(N, M, generator=gen, dtype=dtype)
    return a / a.sum(-1, keepdim=True), b / b.sum(-1, keepdim=True), cost / cost.max()


def _pot_loop(a, b, cost, count):
    an, bn, cn = a[:count].double().numpy(), b[:count].double().numpy(), cost.double().numpy()

    def run():
        for k in range(count):
            ot.sinkhorn2(an[k], bn[k], cn, EPS, method="sinkhorn_log", numItermax=ITERS,
                         stopThr=0.0)
    return run


def candidates(B: int) -> dict:
    a, b, cost = problem(B)
    costB = cost.expand(B, N, M).contiguous()
    return {
        "pytransfer cpu": lambda: sinkhorn(a, b, cost, EPS, max_iter=ITERS, tol=0.0,
                                           method="log", backend="cpu"),
        "pytransfer reference": lambda: sinkhorn(a, b, cost, EPS, max_iter=ITERS, tol=0.0,
                                                 method="log", backend="reference"),
        "POT ot.batch log_sinkhorn": lambda: ot.batch.solve_batch(
            costB, EPS, a, b, max_iter=ITERS, tol=0.0, method="log_sinkhorn", grad="detach"),
    }


def _plain_scaling_loop(a, b, cost):
    """The anchor users would write: no stabilisation, no checks, no early exit; then the
    transport cost <P, C> = sum_i u_i ((K o C) v)_i, the same output as ours."""
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


def _gemms_only(a, b, cost):
    """The two products of every iteration and nothing else: the GEMM floor."""
    K = torch.exp(-cost / EPS)
    Kt = K.t().contiguous()
    u, v = a.clone(), b.clone()

    def run():
        for _ in range(ITERS):
            torch.matmul(v, Kt, out=u)
            torch.matmul(u, K, out=v)
    return run


def scaling_cases(quick: bool) -> list[Case]:
    out = []
    for B in ((256, 1024) if quick else (256, 4096, 65536)):
        a, b, cost = problem(B)
        cands = {
            "pytransfer auto (scaling, cpu)": lambda a=a, b=b, c=cost: sinkhorn(
                a, b, c, EPS, max_iter=ITERS, tol=0.0),
            "plain torch two-matmul loop": _plain_scaling_loop(a, b, cost),
            "GEMMs alone": _gemms_only(a, b, cost),
        }
        targets = {"plain torch two-matmul loop": 1.0, "GEMMs alone": 0.5}  # within 2x
        scale = {}
        if B <= 4096:
            ref_b = min(B, 1024)  # the log-domain reference is timed on a subset, scaled
            ar, br = a[:ref_b], b[:ref_b]
            label = f"torch log-domain reference (timed on {ref_b}, x{B // ref_b})"
            cands[label] = lambda ar=ar, br=br, c=cost: sinkhorn(
                ar, br, c, EPS, max_iter=ITERS, tol=0.0, method="log", backend="reference")
            targets[label] = 50.0 if B == 4096 else None
            scale[label] = B / ref_b

        def metrics(fn=cands["pytransfer auto (scaling, cpu)"], B=B):
            t = time_call(fn, rounds=3)
            return {"problem-iterations / s": (ITERS * B / t, None, ">="),
                    "ns per problem-iteration": (t / (ITERS * B) * 1e9, None, "<=")}
        out.append(Case(op="sinkhorn", name=f"scaling B={B} {N}x{M} eps={EPS} {ITERS} it fp32",
                        subject="pytransfer auto (scaling, cpu)", candidates=cands,
                        targets=targets, scale=scale, metrics=metrics, rounds=3))
    return out


def _early_exit_metrics(B: int):
    """Mixed easy/hard problems at tol=1e-6: total iterations vs stopping at the slowest."""
    def metrics():
        a, b, _ = problem(B, seed=1, dtype=torch.float64)
        gen = torch.Generator().manual_seed(2)
        scale = torch.where(torch.rand(B, generator=gen) < 0.5, 0.1, 1.0).double()
        cost = torch.rand(B, N, M, generator=gen, dtype=torch.float64) * scale[:, None, None]
        res = sinkhorn(a, b, cost, EPS, max_iter=10000, tol=1e-6, backend="cpu")
        total = float(res.n_iter.sum())
        slowest = float(res.n_iter.max()) * B
        return {"iterations saved by per-problem exit (slowest*B / total)":
                (slowest / total, 2.0, ">=")}
    return metrics


def _implicit_metrics(B: int):
    """Backward time as a fraction of the forward: JTLN's case (gradient w.r.t. the weights)
    and with the (B, n, m)-sized cost gradient too. The backward is timed on its own through
    a retained graph (differences of two noisy timings are not reliable)."""
    def metrics():
        out = {}
        for label, cost_grad in (("d/da", False), ("d/da and d/dC", True)):
            a, b, cost = problem(B)
            a.requires_grad_(True)
            cost.requires_grad_(cost_grad)
            inputs = [a, cost] if cost_grad else [a]

            def fwd(a=a, b=b, cost=cost):
                return sinkhorn(a, b, cost, EPS, max_iter=ITERS, tol=0.0, grad="implicit",
                                method="log")

            t_fwd = time_call(fwd, rounds=3)
            loss = fwd().transport_cost.sum()
            t_bwd = time_call(lambda loss=loss, inputs=inputs: torch.autograd.grad(
                loss, inputs, retain_graph=True), rounds=5)
            out[f"implicit backward / forward ({label})"] = (t_bwd / t_fwd, 0.10, "<=")
        return out
    return metrics


def cases(quick: bool = False) -> list[Case]:
    pin_one_thread()
    B = 256 if quick else 4096
    cands = candidates(B)
    a, b, cost = problem(B)
    count = min(B, 64 if quick else POT_LOOP_PROBLEMS)
    loop = _pot_loop(a, b, cost, count)
    factor = B / count
    pot_label = f"POT sinkhorn2 loop (timed on {count}, x{factor:g})"
    cands[pot_label] = loop
    main = Case(
        op="sinkhorn", name=f"B={B} {N}x{M} eps={EPS} {ITERS} it fp32", subject="pytransfer cpu",
        candidates=cands,
        targets={"pytransfer reference": 3.0, pot_label: 20.0},
        rounds=1 if not quick else 2, scale={pot_label: factor},
    )
    extra = Case(op="sinkhorn", name=f"B={B} early exit and implicit backward",
                 subject="pytransfer cpu", candidates={"pytransfer cpu": cands["pytransfer cpu"]},
                 metrics=lambda: {**_early_exit_metrics(B)(), **_implicit_metrics(B)()}, rounds=1)
    return [main, extra, *scaling_cases(quick)]


# ------------------------------------------------------------- pytest-benchmark suite
@pytest.mark.parametrize("label", ["pytransfer cpu", "pytransfer reference",
                                   "POT ot.batch log_sinkhorn"])
def test_sinkhorn_b4096(benchmark, label):
    fn = candidates(4096)[label]
    benchmark.pedantic(fn, rounds=3, warmup_rounds=1)


def test_pot_loop_256(benchmark):
    a, b, cost = problem(POT_LOOP_PROBLEMS)
    benchmark.pedantic(_pot_loop(a, b, cost, POT_LOOP_PROBLEMS), rounds=1, warmup_rounds=0)


def test_sinkhorn_implicit_backward(benchmark):
    a, b, cost = problem(4096)
    a.requires_grad_(True)

    def run():
        res = sinkhorn(a, b, cost, EPS, max_iter=ITERS, tol=0.0, grad="implicit")
        res.transport_cost.sum().backward()
    benchmark.pedantic(run, rounds=3, warmup_rounds=1)


@pytest.mark.parametrize("B", [256, 4096, 65536])
@pytest.mark.parametrize("label", ["auto", "plain"])
def test_scaling(benchmark, B, label):
    a, b, cost = problem(B)
    fn = (_plain_scaling_loop(a, b, cost) if label == "plain" else
          lambda: sinkhorn(a, b, cost, EPS, max_iter=ITERS, tol=0.0))
    benchmark.pedantic(fn, rounds=3, warmup_rounds=1)


def test_no_nan_in_benchmark_workload():
    res = sinkhorn(*problem(64), EPS, max_iter=ITERS, tol=0.0)
    assert np.isfinite(res.transport_cost.numpy()).all()

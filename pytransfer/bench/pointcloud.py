"""Point-cloud Sinkhorn divergence: n = m clouds, d = 64, float32 ("Interpolating between
Optimal Transport and MMD using Sinkhorn Divergences", eq. 4, with GeomLoss's eps-scaling).

Workload: blur = 1 (eps = blur^2 = 1 with the cost |x - y|^2 / 2), scaling = 0.9. GeomLoss runs
one iteration per stage of its eps schedule plus a last extrapolation, so ours runs the same
schedule with ``max_iter=2, tol=0``: S - 1 annealing iterations + 2 at the final eps = S + 1
iterations, each 4 log-sum-exp passes (2 for OT(a, b), 1 per symmetric debiasing term), like
GeomLoss's 4 softmins per iteration.

Implementations: the C++ solver with cached cost tiles (``auto``) and recomputing them
(``online``); anchors GeomLoss ``SamplesLoss("sinkhorn", p=2, blur=1, scaling=0.9,
backend="tensorized")`` (same schedule, averaged updates: tolerance 1e-2), this package's dense
torch reference, and POT log-domain ``ot.sinkhorn2`` on the dense costs (POT has no eps
schedule: the three problems at the final eps for S + 1 iterations each; timed, not compared).
Anchors that cannot run at a size (dense (n, n) memory or minutes) are lines with the reason.
Targets at n = 4096 (full runs; quick runs stop at 1024): auto >= 3x and online >= 2x
GeomLoss tensorized; per pass within 2x of the GEMM + exp work of one (n, m) tile set
(torch.mm + torch.exp, measured in the same run); full runs: time growing as n m d beyond
4096. Roofline work of auto (cached tiles): the three cost GEMMs once, then one exp per entry
and one streamed (n, m) tile per pass.
"""

from __future__ import annotations

import numpy as np
import torch

from pytransfer.bench.timing import time_call
from pytransfer.bench.workload import Impl, Target, Work, Workload
from pytransfer.ot import sinkhorn_points

D, BLUR, SCALING = 64, 1.0, 0.9
EPS = BLUR**2
PASSES = 4  # log-sum-exp passes per iteration (debiased)
SIZES = {"tiny": (48,), "quick": (512, 1024), "full": (1024, 4096, 16384, 65536)}
REFERENCE_MAX_N = 4096  # the dense reference holds ~3 (n, m) temporaries and takes minutes
DENSE_REF_MAX_N = 1024  # float64 reference by the dense backend; above: the C++ one (online)
GEOMLOSS_MAX_N = 16384  # tensorized: 3 dense (n, n) costs + temporaries (~5 GB at 16384)
POT_MAX_N = {"tiny": 48, "quick": 512, "full": 4096}  # float64 dense: ~1 min at 4096
AUTO, ONLINE, GEOM = "pytransfer cpu auto", "pytransfer cpu online", "GeomLoss tensorized"
DENSE, POT = "torch dense reference", "POT sinkhorn_log (3 problems, final eps)"
OTT = ("OTT-JAX is not in the bench extra (it pulls in JAX); a JAX/XLA anchor is not wired "
       "into this harness")
FLASH = "flash-sinkhorn is GPU-only (Triton CUDA kernels)"


def clouds(n: int, seed: int = 0, dtype=torch.float32, device: str = "cpu"):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=gen, dtype=dtype)
    y = torch.randn(n, D, generator=gen, dtype=dtype) * 0.8 + 0.3
    return x.to(device), y.to(device)


def ours(x, y, cache=None, backend="cpu"):
    """The Sinkhorn divergence on GeomLoss's schedule (S + 1 iterations, see above)."""
    return sinkhorn_points(x, y, eps=EPS, eps_scaling=SCALING, debias=True, max_iter=2, tol=0.0,
                           backend=backend, cache=cache, check_inputs=False)


def n_iterations(x, y) -> int:
    return len(ours(x[:16].cpu(), y[:16].cpu(), backend="reference").eps_schedule) + 1


def geomloss_anchor(x, y):
    """GeomLoss tensorized (dense costs), its default debiased Sinkhorn divergence; None when
    GeomLoss is not installed."""
    try:
        from geomloss import SamplesLoss
    except ImportError:
        return None
    loss = SamplesLoss("sinkhorn", p=2, blur=BLUR, scaling=SCALING, backend="tensorized")
    return lambda: loss(x, y)


def pot_anchor(ot, x, y, iters: int):
    """POT log-domain Sinkhorn (float64 NumPy) on the three dense costs, ``iters`` each."""
    xn, yn = x.double().cpu().numpy(), y.double().cpu().numpy()
    w = np.full(len(xn), 1 / len(xn))

    def run():
        vals = [ot.sinkhorn2(w, w, ot.dist(u, v) / 2, EPS, method="sinkhorn_log",
                             numItermax=iters, stopThr=0.0)
                for u, v in ((xn, yn), (xn, xn), (yn, yn))]
        return float(vals[0] - vals[1] / 2 - vals[2] / 2)
    return run


def gemm_exp_floor(x, y):
    """One pass's unavoidable work, by torch: the (n, m) GEMM and one exp per entry."""
    out = x.new_empty(x.shape[0], y.shape[0])

    def run():
        torch.mm(x, y.t(), out=out)
        torch.exp_(out.mul_(-1e-3))
    return run


def _reference(x, y):
    n = x.shape[0]
    backend = "reference" if n <= DENSE_REF_MAX_N else "cpu"
    return lambda: ours(x.double().cpu(), y.double().cpu(), cache=False if backend == "cpu"
                        else None, backend=backend).objective


def _workload(n: int, size: str, device: str, per_nmd: dict) -> Workload:
    x, y = clouds(n, device=device)
    iters = n_iterations(x, y)
    backend = "cpu" if device == "cpu" else "triton"
    if backend == "cpu":
        auto, online = AUTO, ONLINE
        impls: dict[str, Impl | str] = {
            auto: Impl(lambda: ours(x, y).objective, tol=1e-4),
            online: Impl(lambda: ours(x, y, cache=False).objective, tol=1e-4)}
    else:
        auto = online = "pytransfer triton"
        impls = {auto: Impl(lambda: ours(x, y, backend="triton").objective, tol=1e-4)}
    geom = geomloss_anchor(x, y)
    if geom is None:
        impls[GEOM] = "GeomLoss is not installed (pip install 'pytransfer[bench]')"
    elif n > GEOMLOSS_MAX_N or (size != "full" and n > 4096):
        impls[GEOM] = f"dense (n, n) costs: ~{3 * n * n * 4 * 5 / 1e9:.0f} GB and minutes"
    else:
        impls[GEOM] = Impl(geom, anchor=True, tol=1e-2)  # averaged updates: 1e-2
    if n <= REFERENCE_MAX_N and (size == "full" or n <= 1024):
        impls[DENSE] = Impl(lambda: ours(x, y, backend="reference").objective, anchor=True,
                            tol=1e-4)
    else:
        impls[DENSE] = f"~3 dense (n, m) temporaries ({3 * n * n * 4 / 1e9:.1f} GB), minutes"
    try:
        import ot
    except ImportError:
        impls[POT] = "POT is not installed (pip install 'pytransfer[bench]')"
    else:
        if n <= POT_MAX_N[size]:
            impls[POT] = Impl(pot_anchor(ot, x, y, iters), anchor=True, compare=False)
        else:
            impls[POT] = "float64 dense log-domain, 3 problems: about a minute at n=4096"
    impls["OTT-JAX"] = OTT
    if device == "cpu":
        impls["flash-sinkhorn"] = FLASH
    targets = []
    if n == 4096 and isinstance(impls[GEOM], Impl):
        targets = [Target(GEOM, 3.0)] + ([Target(GEOM, 2.0, subject=online)]
                                          if online != auto else [])
    floor = gemm_exp_floor(x, y)

    def metrics():
        res = {}
        t_floor = time_call(floor, 3, device)
        for label, cache in ((auto, None), (online, False)):
            if label not in impls:
                continue
            impls[label].fn()
            t = time_call(lambda c=cache: ours(x, y, cache=c, backend=backend), 1, device)
            per_pass = t / (iters * PASSES + 3)  # + the error and values passes
            res[f"{label}: pass time / (GEMM + exp)"] = (per_pass / t_floor, 2.0, "<=")
            per_nmd[(label, n)] = t / (n * n * D)
            if n > 4096 and (label, 4096) in per_nmd:
                res[f"{label}: time/(n m d) vs n=4096"] = (
                    per_nmd[(label, n)] / per_nmd[(label, 4096)], 1.25, "<=")
        return res
    passes = iters * PASSES
    return Workload(
        op="pointcloud", family=f"debiased Sinkhorn divergence, d={D}", size=n, size_name="n",
        detail=f"n=m, eps={EPS:g}, scaling={SCALING}, {iters} it, fp32", subject=auto,
        impls=impls, reference=_reference(x, y), targets=targets,
        work=Work(flops=3 * 2.0 * n * n * D, bytes=4.0 * passes * n * n,
                  exps=float(passes * n * n)),  # auto: 3 cost tiles once, exps every pass
        metrics=metrics if size != "tiny" else None,
        rounds=1)


def workloads(size: str, device: str = "cpu") -> list[Workload]:
    per_nmd: dict = {}  # time / (n m d) by (label, n): the full run's scaling metric
    return [_workload(n, size, device, per_nmd) for n in SIZES[size]]

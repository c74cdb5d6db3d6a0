"""Point-cloud Sinkhorn (issue 12): n = m point clouds, d = 64, float32, 1 thread.

Workload: the Sinkhorn divergence with GeomLoss's eps-scaling, blur = 1 (eps = blur^2 = 1 with
the cost |x - y|^2 / 2), scaling = 0.9. GeomLoss runs one iteration per stage of its eps
schedule plus a last extrapolation, so ours runs the same schedule (``eps_schedule`` is
GeomLoss's) with ``max_iter=2, tol=0``: S - 1 annealing iterations + 2 at the final eps = S + 1
iterations, each 4 log-sum-exp passes (2 for OT(a, b), 1 per symmetric debiasing term), like
GeomLoss's 4 softmins per iteration.

Anchors: GeomLoss ``SamplesLoss("sinkhorn", p=2, blur=1, scaling=0.9, backend="tensorized")``;
this package's dense torch reference; POT log-domain ``ot.sinkhorn2`` on the dense cost (no
GeomLoss schedule in POT: the three problems at the final eps for S + 1 iterations each).
Why an anchor does not run at a size is recorded in the case name (memory/time of the dense
(n, m) matrices). Targets: auto >= 3x and online >= 2x GeomLoss tensorized at n = 4096; time
growing as n m d beyond 4096; per pass within 2x of the GEMM + exp work (torch.mm + torch.exp
of one (n, m) tile set, measured in the same run).

    python -m bench.report points                 # report (table, JSON, PNG)
    pytest bench/bench_points.py --benchmark-enable
"""

from __future__ import annotations

import numpy as np
import ot
import pytest
import torch

from bench.common import Case, pin_one_thread, time_call
from pytransfer.ot import sinkhorn_points

D, BLUR, SCALING = 64, 1.0, 0.9
EPS = BLUR**2
PASSES = 4  # log-sum-exp passes per iteration (debiased)
REFERENCE_MAX_N = 4096  # the dense reference holds ~3 (n, m) temporaries and takes minutes
GEOMLOSS_MAX_N = 16384  # tensorized: 3 dense (n, n) costs + temporaries (~5 GB at 16384)
POT_MAX_N = 4096  # float64 dense log-domain, 3 problems: ~1 min at 4096


def clouds(n: int, seed: int = 0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=gen, dtype=dtype)
    y = torch.randn(n, D, generator=gen, dtype=dtype) * 0.8 + 0.3
    return x, y


def ours(x, y, cache=None, backend="cpu"):
    """The Sinkhorn divergence on GeomLoss's schedule (S + 1 iterations, see above)."""
    return sinkhorn_points(x, y, eps=EPS, eps_scaling=SCALING, debias=True, max_iter=2, tol=0.0,
                           backend=backend, cache=cache, check_inputs=False)


def n_iterations(x, y) -> int:
    return len(ours(x[:16], y[:16], backend="reference").eps_schedule) + 1  # same diameter


def geomloss_anchor(x, y):
    """GeomLoss tensorized (dense costs), its default debiased Sinkhorn divergence."""
    from geomloss import SamplesLoss

    loss = SamplesLoss("sinkhorn", p=2, blur=BLUR, scaling=SCALING, backend="tensorized")
    return lambda: loss(x, y)


def pot_anchor(x, y, iters):
    """POT log-domain Sinkhorn (float64 numpy) on the three dense costs, ``iters`` each."""
    xn, yn = x.double().numpy(), y.double().numpy()
    w = np.full(len(xn), 1 / len(xn))

    def run():
        vals = [ot.sinkhorn2(w, w, ot.dist(u, v) / 2, EPS, method="sinkhorn_log",
                             numItermax=iters, stopThr=0.0)
                for u, v in ((xn, yn), (xn, xn), (yn, yn))]
        return float(vals[0] - vals[1] / 2 - vals[2] / 2)
    return run


def gemm_exp_floor(x, y):
    """One pass's unavoidable work, by torch: the (n, m) GEMM and one exp per entry."""
    out = torch.empty(x.shape[0], y.shape[0])

    def run():
        torch.mm(x, y.t(), out=out)
        torch.exp_(out.mul_(-1e-3))
    return run


def check(value, want, rtol, label):
    got, want = float(value), float(want)
    assert abs(got - want) <= rtol * abs(want), f"{label}: {got} vs {want} (rtol {rtol})"


def candidates(n: int, full: bool = False) -> tuple[dict, dict]:
    """(label -> callable, label -> why it is absent) at size n."""
    x, y = clouds(n)
    cands = {
        "pytransfer cpu auto": lambda: ours(x, y).objective,
        "pytransfer cpu online": lambda: ours(x, y, cache=False).objective,
    }
    absent = {}
    if n <= (GEOMLOSS_MAX_N if full else 4096):
        cands["GeomLoss tensorized"] = geomloss_anchor(x, y)
    else:
        absent["GeomLoss tensorized"] = "dense (n, n) costs: ~5 GB and minutes at n=16384"
    if n <= REFERENCE_MAX_N:
        cands["torch dense reference"] = lambda: ours(x, y, backend="reference").objective
    else:
        absent["torch dense reference"] = "~3 dense (n, m) temporaries (3 GB at 16384)"
    if n <= (POT_MAX_N if full else 1024):
        cands["POT sinkhorn_log (3 problems, final eps)"] = pot_anchor(x, y, n_iterations(x, y))
    else:
        absent["POT sinkhorn_log (3 problems, final eps)"] = "float64 dense, ~1 min at 4096"
    return cands, absent


def validate(n: int) -> None:
    """The timed implementations agree: ours with the dense reference (same iterates) and
    GeomLoss (same schedule, averaged updates: 1e-2); POT's anchor times debiased <P, C> at
    the final eps (no schedule in POT), checked here on the (a, b) term."""
    cands, _ = candidates(min(n, 1024))
    want = float(cands["torch dense reference"]())
    check(cands["pytransfer cpu auto"](), want, 1e-4, "auto vs reference")
    check(cands["pytransfer cpu online"](), want, 1e-4, "online vs reference")
    check(cands["GeomLoss tensorized"](), want, 1e-2, "GeomLoss vs reference")
    # POT (no schedule: final eps, same iteration count): its <P, C> of OT(a, b) vs ours
    x, y = clouds(256)
    iters = n_iterations(x, y)
    w = np.full(256, 1 / 256)
    pot = ot.sinkhorn2(w, w, ot.dist(x.double().numpy(), y.double().numpy()) / 2, EPS,
                       method="sinkhorn_log", numItermax=iters, stopThr=0.0)
    mine = sinkhorn_points(x, y, eps=EPS, max_iter=iters, tol=0.0).transport_cost
    check(mine, pot, 1e-4, "ours vs POT sinkhorn_log (<P, C>, final eps)")


def cases(quick: bool = False) -> list[Case]:
    pin_one_thread()
    validate(1024)
    sizes = (1024, 4096) if quick else (1024, 4096, 16384, 65536)
    out, per_nmd = [], {}
    for n in sizes:
        cands, absent = candidates(n, full=not quick)
        x, y = clouds(n)
        iters = n_iterations(x, y)
        floor = gemm_exp_floor(x, y)
        gl = "GeomLoss tensorized"
        targets = {gl: 3.0} if n == 4096 and gl in cands else {}
        note = "; ".join(f"{k}: {v}" for k, v in absent.items())

        def metrics(n=n, iters=iters, floor=floor, x=x, y=y, cands=cands, gl=gl):
            res = {}
            t_floor = time_call(floor, rounds=3)
            for label, cache in (("auto", None), ("online", False)):
                t = time_call(lambda c=cache: ours(x, y, cache=c), rounds=1)
                per_pass = t / (iters * PASSES + 3)  # + the error and values passes
                res[f"{label}: pass time / (GEMM + exp)"] = (per_pass / t_floor, 2.0, "<=")
                per_nmd[(label, n)] = t / (n * n * D)
                if n > 4096 and (label, 4096) in per_nmd:
                    res[f"{label}: time/(n m d) vs n=4096"] = (
                        per_nmd[(label, n)] / per_nmd[(label, 4096)], 1.25, "<=")
            if n == 4096 and gl in cands:
                t_gl = time_call(cands[gl], rounds=1)
                t_on = time_call(cands["pytransfer cpu online"], rounds=1)
                res["online speed-up vs GeomLoss tensorized"] = (t_gl / t_on, 2.0, ">=")
            return res

        out.append(Case(op="points", name=f"n=m={n} d={D} fp32 {iters} it debiased"
                        + (f" (absent: {note})" if note else ""),
                        subject="pytransfer cpu auto", candidates=cands, targets=targets,
                        metrics=metrics, rounds=1))
    return out


# ------------------------------------------------------------- pytest-benchmark suite
@pytest.mark.parametrize("n", [1024, 4096, 16384])
@pytest.mark.parametrize("label", ["pytransfer cpu auto", "pytransfer cpu online",
                                   "GeomLoss tensorized", "torch dense reference"])
def test_points(benchmark, n, label):
    cands, absent = candidates(n)
    if label not in cands:
        pytest.skip(absent[label])
    want = float(ours(*clouds(n)).objective) if "pytransfer" not in label else None
    value = benchmark.pedantic(cands[label], rounds=1, warmup_rounds=0)
    if want is None:  # ours: against the dense reference's iterates on a subset
        x, y = clouds(n)
        want = float(ours(x, y, backend="reference").objective) if n <= 1024 else float(
            ours(x, y, cache=False).objective)
    check(value, want, 1e-2 if "GeomLoss" in label else 1e-4, label)

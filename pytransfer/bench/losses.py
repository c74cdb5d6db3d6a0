"""Drop-in losses at training sizes, forward + backward, float32, each against the loss a user
would write by hand in torch (same inputs, same value).

- ``OTLoss(C, eps=0.1, max_iter=100, tol=0)`` (JTLN's OT loss, eq. 10-11) vs the hand-written
  loop (scaling-form Sinkhorn, 100 iterations, the dual gradient passed to
  ``autograd.backward``) at B=128 5x5, B=128 78x22, B=512 78x22: target >= 3x. Quick runs
  add the whole-call overhead at B=1, 2x2.
- The fixed per-call overhead (issue 13): the whole ``OTLoss`` forward call at B=1, 2x2 on an
  input requiring grad against the raw kernel call it makes (its arguments bound once):
  their difference, wrapper, validation and dispatch, is the metric (target <= 50 us).
- ``MKMMDLoss`` (linear, 19 kernels; JTLN eq. 14) vs a hand-written O(n d) estimator at n=64
  d=256 (target >= 2x), n=256 d=2048 and, in full runs, n=128 d=1024 and the overhead size
  n=64 d=8.
- ``HScore`` (soft-HGR) vs the hand-written expression at n=256 and 1024 (full: 4096), k=64.
- ``LautumLoss`` vs the hand-written loss on a plain-torch CCA at B=128-512.

``sinkhorn(method="auto")`` against the plain two-matmul loop is the sinkhorn op's scaling
family. Peak memory is the report's column. Compared outputs are the value followed by the
batch size times the gradient (errors of both weigh alike). The OTLoss and MKMMDLoss series
run along B*n*m and n*d (one line across the stated sizes).
"""

from __future__ import annotations

import torch

from pytransfer.bench.lautum import HAND, _compared, loss_fwd_bwd, loss_problem
from pytransfer.bench.sinkhorn import iterations_computed
from pytransfer.bench.timing import time_alternated
from pytransfer.bench.workload import Impl, Target, Work, Workload, fwd_bwd
from pytransfer.mmd import gaussian_kernels
from pytransfer.nn import HScore, MKMMDLoss, OTLoss
from pytransfer.ot import block

OT_EPS, OT_ITERS = 0.1, 100
U = 19
OT_SIZES = {"tiny": ((4, 5, 3),), "quick": ((1, 2, 2), (128, 5, 5), (128, 78, 22),
                                            (512, 78, 22)),
            "full": ((1, 2, 2), (128, 5, 5), (128, 78, 22), (512, 78, 22))}
MMD_SIZES = {"tiny": ((16, 8),), "quick": ((64, 256), (256, 2048)),
             "full": ((64, 8), (64, 256), (128, 1024), (256, 2048))}
HSCORE_SIZES = {"tiny": ((32, 8),), "quick": ((256, 64), (1024, 64)),
                "full": ((256, 64), (1024, 64), (4096, 64))}
LAUTUM_B = {"tiny": (64,), "quick": (128, 512), "full": (128, 256, 512)}
RAW = "raw kernel call"
#: the whole-call overhead's target (issue 13) and its (alternated rounds, calls per round)
CALL_OVERHEAD_US = 50.0
CALL_ROUNDS = {"tiny": (2, 10), "quick": (10, 200), "full": (10, 500)}


# ------------------------------------------------------------------ OTLoss
def ot_inputs(B: int, n: int, m: int, seed: int = 0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    ls = torch.randn(B, n, generator=gen)
    lt = torch.randn(B, m, generator=gen)
    cost = torch.rand(n, m, generator=gen)
    return ls.to(dtype), lt.to(dtype), (cost / cost.max()).to(dtype)


def handwritten_ot_loss(cost: torch.Tensor, eps: float = OT_EPS, iters: int = OT_ITERS):
    """What a user writes: scaling-form Sinkhorn under no_grad, then eq. 11's gradient
    (the centred dual potential f = eps log u, divided by B for the mean) to autograd."""
    K = torch.exp(-cost / eps)
    Kt, KC = K.t().contiguous(), (K * cost).t().contiguous()

    def loss(ps: torch.Tensor, pt: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            v = torch.ones_like(pt)
            for _ in range(iters):
                u = ps / (v @ Kt)
                v = pt / (u @ K)
            value = (u * (v @ KC)).sum(-1).mean()
            f = eps * torch.log(u)
            grad = (f - f.mean(-1, keepdim=True)) / ps.shape[0]
        torch.autograd.backward(ps, grad)
        return value
    return loss


def ot_workload(B: int, n: int, m: int, dtype=torch.float32) -> dict:
    """{"ours", "hand-written"}: forward + backward to the logits; each returns
    (loss value, gradient of the source logits)."""
    ls, lt, cost = ot_inputs(B, n, m, dtype=dtype)
    ours_loss = OTLoss(cost, eps=OT_EPS, max_iter=OT_ITERS, tol=0.0)
    hand_loss = handwritten_ot_loss(cost)

    def ours():
        x = ls.detach().requires_grad_(True)
        loss = ours_loss(x.softmax(-1), lt.softmax(-1))
        loss.backward()
        return loss.detach(), x.grad

    def hand():
        x = ls.detach().requires_grad_(True)
        value = hand_loss(x.softmax(-1), lt.softmax(-1))
        return value, x.grad
    return {"ours": ours, "hand-written": hand}


def ot_call_workload(dtype=torch.float32) -> dict:
    """{"ours": the whole OTLoss forward call at B=1, 2x2 on an input that requires grad (as
    in training; no backward), RAW: the C++ kernel alone, its arguments checked and bound
    once (``block.bound``)}: each returns the transport cost (B=1: the loss)."""
    ls, lt, cost = ot_inputs(1, 2, 2, dtype=dtype)
    ps, pt = ls.softmax(-1).requires_grad_(True), lt.softmax(-1)
    loss = OTLoss(cost, eps=OT_EPS, max_iter=OT_ITERS, tol=0.0)
    kernel, outs = block.bound(ps.detach(), pt, cost[None], OT_EPS, OT_ITERS, 0.0)
    transport = outs.tensor(6)

    def raw(inputs=(ps, pt, cost)):  # (keeps the memory the bound pointers point into)
        kernel()
        return transport
    return {"ours": lambda: loss(ps, pt), RAW: raw}


def _call_overhead(size: str):
    """The metric: median whole call - median raw kernel call (us), the two timed in
    alternated rounds so that both see the same state of a noisy machine."""
    def metrics():
        fns = ot_call_workload()
        rounds, calls = CALL_ROUNDS[size]
        for fn in fns.values():
            fn()
        times, _ = time_alternated({k: (fn, rounds * calls) for k, fn in fns.items()},
                                   rounds=rounds)
        whole, raw = (times[k] * 1e6 for k in ("ours", RAW))
        return {f"whole call - {RAW}, us (alternated)": (whole - raw, CALL_OVERHEAD_US, "<=")}
    return metrics


def _call_workload(size: str) -> Workload:
    fns = ot_call_workload()
    ref = ot_call_workload(torch.float64)["ours"]
    return Workload(
        op="losses", family="OTLoss forward call", size=4, size_name="B*n*m",
        detail=f"B=1, 2x2, eps={OT_EPS}, {OT_ITERS} it, input requiring grad, fp32: wrapper, "
               f"validation and dispatch over the kernel", subject="ours",
        impls={"ours": Impl(fns["ours"]), RAW: Impl(fns[RAW], anchor=True)},
        reference=lambda: ref().detach(), metrics=_call_overhead(size),
        rounds=CALL_ROUNDS[size][1] // 2)  # (times 10 calls: the harness's median)


# ------------------------------------------------------------------ MK-MMD
def mmd_inputs(n: int, d: int, seed: int = 0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    xs, xt = torch.randn(n, d, generator=gen), torch.randn(n, d, generator=gen) * 1.2 + 0.3
    return xs.to(dtype), xt.to(dtype)


def handwritten_mk_mmd(xs: torch.Tensor, xt: torch.Tensor, multipliers) -> torch.Tensor:
    """Linear MK-MMD (JTLN eq. 14) in O(n d) torch: quad-tuple distances, one bandwidth (the
    pooled mean pairwise squared distance, detached) times each multiplier, uniform weights."""
    x = torch.cat([xs, xt]).detach()
    N = x.shape[0]
    base = 2 * (x - x.mean(0)).square().sum() / (N - 1)
    gammas = 1 / (2 * torch.tensor(multipliers, dtype=xs.dtype) * base)
    s1, s2, t1, t2 = xs[0::2], xs[1::2], xt[0::2], xt[1::2]
    d = torch.stack([(s1 - s2).square().sum(1), (t1 - t2).square().sum(1),
                     (s1 - t2).square().sum(1), (s2 - t1).square().sum(1)])  # (4, P)
    k = torch.exp(-gammas[:, None, None] * d)  # (U, 4, P)
    return (k[:, 0] + k[:, 1] - k[:, 2] - k[:, 3]).mean(-1).mean()


def mmd_workload(n: int, d: int, dtype=torch.float32) -> dict:
    """{"ours", "hand-written"}: forward + backward; each returns (value, grad of xs)."""
    xs, xt = mmd_inputs(n, d, dtype=dtype)
    loss = MKMMDLoss()
    mult = gaussian_kernels(U).multipliers

    return {"ours": fwd_bwd(loss, (xs, xt), grad=(0, 1)),
            "hand-written": fwd_bwd(lambda x, y: handwritten_mk_mmd(x, y, mult), (xs, xt),
                                    grad=(0, 1))}


# ------------------------------------------------------------------ H-score
def handwritten_soft_hgr(f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    f, g = f - f.mean(0), g - g.mean(0)
    n = f.shape[0]
    return -((f * g).sum() / n - 0.5 * ((f.T @ f) * (g.T @ g)).sum() / n**2)


def hscore_workload(n: int = 256, k: int = 64, dtype=torch.float32) -> dict:
    gen = torch.Generator().manual_seed(0)
    f0 = torch.randn(n, k, generator=gen).to(dtype)
    g0 = torch.randn(n, k, generator=gen).to(dtype)
    loss = HScore()

    return {"ours": fwd_bwd(loss, (f0, g0)),
            "hand-written": fwd_bwd(handwritten_soft_hgr, (f0, g0))}


# ------------------------------------------------------------------ workloads
def _pair(family: str, size: float, size_name: str, detail: str, make, scale: int,
          rounds: int, target: float | None = None, work: Work | None = None) -> Workload:
    fns, ref = make(torch.float32), make(torch.float64)["ours"]
    return Workload(
        op="losses", family=family, size=size, size_name=size_name, detail=detail,
        subject="ours", impls={"ours": Impl(_compared(fns["ours"], scale), tol=1e-4),
                               "hand-written": Impl(_compared(fns["hand-written"], scale),
                                                    anchor=True, tol=1e-4)},
        reference=_compared(ref, scale),
        targets=[Target("hand-written", target)] if target else [], work=work, rounds=rounds)


def _lautum(B: int, size: str) -> Workload:
    ours, hand = loss_fwd_bwd(B)
    x, f, loss = loss_problem(B)
    p, q = loss.dims(B)

    def reference():  # the loss on float64 copies: value, gradient of the features
        ff = f.double().requires_grad_(True)
        value = loss(x.double(), ff)
        value.backward()
        return torch.cat([value.detach().reshape(1), B * ff.grad.flatten()])
    return Workload(
        op="losses", family="LautumLoss, 784 -> p, 256 -> q", size=B, size_name="B",
        detail=f"p={p}, q={q}, fwd+bwd, fp32", subject="ours",
        impls={"ours": Impl(_compared(ours, B), tol=1e-3),
               HAND: Impl(_compared(hand, B), anchor=True, tol=1e-3)},
        reference=reference, rounds={"tiny": 1, "quick": 5, "full": 10}[size])


def workloads(size: str, device: str = "cpu") -> list[Workload]:
    if device != "cpu":
        return []  # the hand-written losses are CPU torch; the GPU losses: the ops' kernels
    rounds = {"tiny": 1, "quick": 5, "full": 10}[size]
    out = []
    for B, n, m in OT_SIZES[size]:
        ls, lt, cost = ot_inputs(B, n, m)
        done = iterations_computed(ls.softmax(-1), lt.softmax(-1), cost, OT_EPS, OT_ITERS)
        out.append(_pair(
            "OTLoss", B * n * m, "B*n*m",
            f"B={B}, {n}x{m}, eps={OT_EPS}, {OT_ITERS} it, fwd+bwd, fp32; the kernel computes "
            f"{done / B:.0f} of them on average (exact fixed points)",
            lambda dt, B=B, n=n, m=m: ot_workload(B, n, m, dt), B, rounds,
            3.0 if B >= 128 else None,
            Work(flops=4.0 * done * n * m, bytes=4.0 * B * (n + m) * 2)))
    out += [_pair("MKMMDLoss linear", n * d, "n*d", f"n={n}, d={d}, U={U}, fwd+bwd, fp32",
                  lambda dt, n=n, d=d: mmd_workload(n, d, dt), n, rounds,
                  2.0 if (n, d) == (64, 256) else None)
            for n, d in MMD_SIZES[size]]
    out += [_pair(f"HScore (soft-HGR), k={k}", n, "n", "fwd+bwd, fp32",
                  lambda dt, n=n, k=k: hscore_workload(n, k, dt), n, rounds)
            for n, k in HSCORE_SIZES[size]]
    return [_call_workload(size)] + out + [_lautum(B, size) for B in LAUTUM_B[size]]

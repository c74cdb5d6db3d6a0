"""MK-MMD (JTLN eq. 12-14; Gretton et al., "A Kernel Two-Sample Test", eq. 3): forward +
backward, float32, U = 19 power-of-two Gaussian kernels.

Linear estimator: the fused kernel against the plain-torch linear estimator (this package's
reference backend; >= 3x at n=4096, d=2048) and a re-implementation of tllib's
``MultipleKernelMaximumMeanDiscrepancy(linear=True)`` (>= 1000x at n=256, d=256; quick runs
check it at n=128, d=128); peak extra memory <= 3x the inputs. Targets apply at the sizes
they were stated for. Quadratic
U-statistic: the tiled kernel against the one-GEMM reference and GeomLoss's Gaussian-kernel
``SamplesLoss`` summed over the 19 bandwidths (the biased V-statistic: timed, not compared).
"""

from __future__ import annotations

import torch

from pytransfer.bench.timing import call_with_peak
from pytransfer.bench.workload import Impl, Target, Work, Workload
from pytransfer.mmd import gaussian_kernels, mk_mmd

U = 19
MEMORY_CAP = 1.5e9  # bytes: anchors needing more are reported, not run
LINEAR = {"tiny": (8, (16,)), "quick": (128, (128, 512, 2048)), "full": (256, (256, 1024, 4096))}
WIDE = {"tiny": (16, (16,)), "quick": (512, (1024,)), "full": (2048, (4096,))}
QUADRATIC = {"tiny": (8, (16,)), "quick": (256, (256, 512)), "full": (512, (1024, 2048))}
TLLIB_AT = {"tiny": 16, "quick": 128, "full": 256}  # n of the >= 1000x target


def features(n: int, d: int, device: str = "cpu", seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    xs = torch.randn(n, d, generator=gen)
    xt = torch.randn(n, d, generator=gen) * 1.2 + 0.3
    return xs.to(device), xt.to(device)


def tllib_linear_mk_mmd(zs: torch.Tensor, zt: torch.Tensor, alphas) -> torch.Tensor:
    """tllib's algorithm: per kernel, pairwise squared distances from the (2n, 2n, d) tensor of
    differences, sigma^2 = alpha * mean of those distances (detached), exp; the kernel
    matrices are summed and weighted by the linear index matrix, whose quad-tuples
    (i, i+1 mod n) overlap and wrap around; plus tllib's constant 2 / (n - 1)."""
    n = zs.shape[0]
    x = torch.cat([zs, zt])
    index = torch.zeros(2 * n, 2 * n, device=x.device)
    for i in range(n):
        s1, s2 = i, (i + 1) % n
        t1, t2 = s1 + n, s2 + n
        index[s1, s2] = index[t1, t2] = 1.0 / n
        index[s1, t2] = index[s2, t1] = -1.0 / n
    kernel = 0
    for alpha in alphas:
        l2 = ((x.unsqueeze(0) - x.unsqueeze(1)) ** 2).sum(2)
        sigma2 = alpha * l2.detach().mean()
        kernel = kernel + torch.exp(-l2 / (2 * sigma2))
    return (kernel * index).sum() + 2.0 / (n - 1)


def geomloss_gaussian(zs: torch.Tensor, zt: torch.Tensor, alphas):
    """GeomLoss ``SamplesLoss("gaussian", blur=sigma_u)`` summed over the bandwidths, with
    sigma_u^2 = alpha_u * mean pairwise squared distance (the biased V-statistic), or None."""
    try:
        from geomloss import SamplesLoss
    except ImportError:
        return None

    def loss(x, y):
        pooled = torch.cat([x, y]).detach()
        mean_d2 = 2 * pooled.var(0, unbiased=False).sum()  # mean pairwise squared distance
        return sum(SamplesLoss("gaussian", blur=float((alpha * mean_d2).sqrt()),
                               backend="tensorized")(x, y) for alpha in alphas)
    return loss


def fwd_bwd(fn, xs, xt):
    """Forward and backward of ``fn(xs, xt)``; returns the forward value."""
    def run():
        x, y = xs.detach().requires_grad_(True), xt.detach().requires_grad_(True)
        value = fn(x, y)
        value.backward()
        return value.detach()
    return run


def _reference(xs, xt, estimator):
    spec = gaussian_kernels(U)
    return lambda: mk_mmd(xs.double(), xt.double(), kernels=spec, estimator=estimator,
                          backend="reference")


def _linear(n: int, d: int, size: str, device: str, family: str, targets_at: dict) -> Workload:
    spec = gaussian_kernels(U)
    xs, xt = features(n, d, device)
    backend = "cpu" if device == "cpu" else "triton"
    ours = f"pytransfer linear {backend}"
    impls: dict[str, Impl | str] = {
        ours: Impl(fwd_bwd(lambda x, y: mk_mmd(x, y, kernels=spec, backend=backend), xs, xt),
                   tol=1e-4),
        "plain-torch linear (reference)": Impl(fwd_bwd(
            lambda x, y: mk_mmd(x, y, kernels=spec, backend="reference"), xs, xt), anchor=True,
            tol=1e-4),
    }
    need = 3 * (2 * n) ** 2 * d * 4
    if need <= MEMORY_CAP:
        alphas = spec.multipliers
        impls["tllib-style linear"] = Impl(fwd_bwd(
            lambda x, y: tllib_linear_mk_mmd(x, y, alphas), xs, xt), anchor=True,
            compare=False)  # overlapping wrapped tuples and a constant: another estimate
    else:
        impls["tllib-style linear"] = f"needs ~{need / 1e9:.0f} GB ((2n)^2 d floats)"
    targets = [Target(k, v) for k, v in targets_at.get(n, {}).items()]

    def metrics():  # the fused path holds no (n, n) or (n, U) intermediates
        _, peak = call_with_peak(impls[ours].fn, device)
        return {"peak extra memory / input size": (
            None if peak is None else peak * 2**20 / (2 * n * d * 4), 3.0, "<=")}
    return Workload(
        op="mmd", family=family, size=n, size_name="n", detail=f"U={U}, fwd+bwd, fp32",
        subject=ours, impls=impls, reference=_reference(xs, xt, "linear"), targets=targets,
        work=Work(flops=18.0 * n * d, bytes=16.0 * n * d, exps=4.0 * n * U),
        metrics=metrics if n * d >= 2**19 else None,  # the d=2048 (quick: d=512) family
        rounds={"tiny": 1, "quick": 3, "full": 3}[size])


def _quadratic(n: int, d: int, size: str, device: str) -> Workload:
    spec = gaussian_kernels(U)
    xs, xt = features(n, d, device)
    backend = "cpu" if device == "cpu" else "triton"
    ours = f"pytransfer quadratic tiled {backend}"
    impls: dict[str, Impl | str] = {
        ours: Impl(fwd_bwd(lambda x, y: mk_mmd(x, y, kernels=spec, estimator="quadratic",
                                               backend=backend), xs, xt), tol=1e-4),
    }
    need = 3 * (2 * n) ** 2 * U * 4
    if need <= MEMORY_CAP:
        impls["one-GEMM quadratic (reference)"] = Impl(fwd_bwd(
            lambda x, y: mk_mmd(x, y, kernels=spec, estimator="quadratic",
                                backend="reference"), xs, xt), anchor=True, tol=1e-4)
    else:
        impls["one-GEMM quadratic (reference)"] = f"needs ~{need / 1e9:.0f} GB"
    geom = geomloss_gaussian(xs, xt, spec.multipliers)
    if geom is None:
        impls["GeomLoss gaussian x19"] = "GeomLoss is not installed (pip install geomloss)"
    elif 3 * (2 * n) ** 2 * 4 * 2 <= MEMORY_CAP:
        impls["GeomLoss gaussian x19"] = Impl(fwd_bwd(geom, xs, xt), anchor=True, compare=False)
    return Workload(
        op="mmd", family=f"quadratic, d={d}", size=n, size_name="n",
        detail=f"U={U}, fwd+bwd, fp32", subject=ours, impls=impls,
        reference=_reference(xs, xt, "quadratic"),
        work=Work(flops=24.0 * n * n * d, bytes=16.0 * n * d, exps=4.0 * n * n * U),
        rounds={"tiny": 1, "quick": 2, "full": 2}[size])


def workloads(size: str, device: str = "cpu") -> list[Workload]:
    d, ns = LINEAR[size]
    out = [_linear(n, d, size, device, f"linear, d={d}",
                   {TLLIB_AT[size]: {"tllib-style linear": 1000.0}}) for n in ns]
    d, ns = WIDE[size]
    out += [_linear(n, d, size, device, f"linear, d={d}",
                    {4096: {"plain-torch linear (reference)": 3.0}}) for n in ns]
    d, ns = QUADRATIC[size]
    return out + [_quadratic(n, d, size, device) for n in ns]

"""H-score ("An Information-theoretic Approach to Transferability in Task Transfer
Learning", Definition 2), float32 features, one-shot and pixel-wise.

Anchors: faithful re-implementations of tllib's ``h_score`` (NumPy, np.cov in float64,
explicit ``pinv``; >= 3x at N=50k, d=2048) and ``regularized_h_score`` (sklearn Ledoit-Wolf
with its own (1 - alpha) weighting: timed, not compared; >= 3x at N=50k), sklearn's
Ledoit-Wolf with NumPy (the same quantity), this package's float64 reference; pixel-wise: the
per-pixel loop of tllib's ``h_score`` (timed on a few pixels and scaled; >= 100x at P=4096).
Extra peak memory <= 0.4 GB at N=50k. Targets apply at the sizes they were stated for.
"""

from __future__ import annotations

import numpy as np
import torch

from pytransfer.bench.timing import call_with_peak
from pytransfer.bench.workload import Impl, Target, Work, Workload
from pytransfer.hscore import h_score, pixelwise_h_score
from pytransfer.hscore.reference import h_score_reference, ledoit_wolf_reference

ONE_SHOT = {"tiny": (16, 5, (200,)), "quick": (256, 20, (1000, 4000)),
            "full": (2048, 100, (10_000, 50_000))}  # d, C, N
PIXEL = {"tiny": (4, 3, 50, (8,)), "quick": (32, 8, 2000, (64, 256)),
         "full": (128, 16, 20_000, (512, 4096))}  # d, C, N, P
LOOP_PIXELS = {"tiny": 8, "quick": 8, "full": 8}


def tllib_h_score(features: np.ndarray, labels: np.ndarray) -> float:
    """tllib ``h_score``: np.cov (float64), a per-class mean matrix g, trace(pinv(cov f) cov g)."""
    f, y = features, labels
    covf = np.cov(f, rowvar=False)
    g = np.zeros_like(f)
    for i in range(int(y.max() + 1)):
        g[y == i] = np.mean(f[y == i, :], axis=0)
    covg = np.cov(g, rowvar=False)
    return float(np.trace(np.dot(np.linalg.pinv(covf, rcond=1e-15), covg)))


def tllib_regularized_h_score(features: np.ndarray, labels: np.ndarray) -> float:
    """tllib ``regularized_h_score``: centred float64 features, sklearn LedoitWolf covariance,
    pinv, and the (1 - alpha) factor on cov(g)."""
    from sklearn.covariance import LedoitWolf

    f = features.astype("float64")
    f = f - np.mean(f, axis=0, keepdims=True)
    y = labels
    g = np.zeros_like(f)
    cov = LedoitWolf(assume_centered=False).fit(f)
    alpha, covf_alpha = cov.shrinkage_, cov.covariance_
    for i in range(int(y.max() + 1)):
        g[y == i] = np.mean(f[y == i, :], axis=0)
    covg = np.cov(g, rowvar=False)
    return float(np.trace(np.dot(np.linalg.pinv(covf_alpha, rcond=1e-15), (1 - alpha) * covg)))


def sklearn_ledoit_wolf_h_score(features: np.ndarray, labels: np.ndarray) -> float:
    """The same quantity written independently: sklearn's Ledoit-Wolf covariance (1/N) and
    tr(cov^-1 cov g) with cov g the 1/N covariance of the per-class means (float64)."""
    from sklearn.covariance import LedoitWolf

    f = features.astype("float64")
    z = f - f.mean(0)
    cov = LedoitWolf().fit(f).covariance_
    g = np.zeros_like(z)
    for c in np.unique(labels):
        g[labels == c] = z[labels == c].mean(0)
    return float(np.trace(np.linalg.solve(cov, g.T @ g / len(f))))


def problem(N: int, d: int, C: int, device: str = "cpu", seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, C, (N,), generator=gen)
    f = torch.randn(N, d, generator=gen)
    f += 0.3 * torch.randn(C, d, generator=gen)[y]
    f += 3.0  # a common offset, as in real activations
    return f.to(device), y.to(device)


def pixel_problem(N: int, d: int, P: int, C: int, device: str = "cpu", seed: int = 1):
    """Features and uint8 label maps whose classes depend on the features pixel by pixel."""
    gen = torch.Generator().manual_seed(seed)
    f = torch.randn(N, d, generator=gen)
    maps = torch.empty(N, P, dtype=torch.uint8)
    for p0 in range(0, P, 64):
        w = torch.randn(d, C, generator=gen)
        logits = (f @ w)[:, None, :] + 3 * torch.randn(N, min(64, P - p0), C, generator=gen)
        maps[:, p0:p0 + 64] = torch.argmax(logits, -1)
    return f.to(device), maps.to(device)


def _one_shot(N: int, d: int, C: int, size: str, device: str, shrinkage: str | None):
    f, y = problem(N, d, C, device)
    fn, yn = f.cpu().numpy(), y.cpu().numpy()
    backend = "cpu" if device == "cpu" else "triton"
    ours = f"pytransfer {backend}" + (" ledoit-wolf" if shrinkage else "")
    impls: dict[str, Impl | str] = {
        ours: Impl(lambda: h_score(f, y, num_classes=C, shrinkage=shrinkage, backend=backend),
                   tol=1e-4)}
    if shrinkage is None:
        impls["pytransfer reference (fp64)"] = Impl(lambda: h_score_reference(f, y, C),
                                                    anchor=True, tol=1e-12)
        impls[anchor := "tllib h_score (pinv)"] = Impl(lambda: tllib_h_score(fn, yn),
                                                       anchor=True, tol=1e-6)

        def ref():
            return h_score_reference(f, y, C)
    else:
        impls[anchor := "tllib regularized_h_score"] = Impl(
            lambda: tllib_regularized_h_score(fn, yn), anchor=True, compare=False)
        impls["sklearn Ledoit-Wolf + NumPy"] = Impl(
            lambda: sklearn_ledoit_wolf_h_score(fn, yn), anchor=True, tol=1e-6)

        def ref():
            return h_score_reference(f, y, C, shrinkage=ledoit_wolf_reference(f))
    family = f"one-shot{', Ledoit-Wolf' if shrinkage else ''}, d={d}, C={C}"

    def metrics():  # streaming statistics: O(d^2 + C d) beyond the inputs
        _, peak = call_with_peak(impls[ours].fn, device)
        return {"extra peak memory (GB)": (None if peak is None else peak * 2**20 / 1e9,
                                           0.4 if N == 50_000 else None, "<=")}
    return Workload(
        op="hscore", family=family, size=N, size_name="N", detail="fp32", subject=ours,
        impls=impls, reference=ref, targets=[Target(anchor, 3.0)] if N == 50_000 else [],
        metrics=metrics if shrinkage is None else None,
        work=Work(flops=N * d * d + 2.0 * N * d + d**3 / 3, bytes=4.0 * N * d),
        rounds={"tiny": 1, "quick": 2, "full": 1}[size])


def _pixel(P: int, d: int, C: int, N: int, size: str, device: str) -> Workload:
    f, maps = pixel_problem(N, d, P, C, device)
    backend = "cpu" if device == "cpu" else "triton"
    ours = f"pytransfer {backend}" + (" (numba)" if backend == "cpu" else "")
    pixels = min(P, LOOP_PIXELS[size])
    fn, mn = f.cpu().numpy(), maps[:, :pixels].cpu().numpy()
    loop = "per-pixel tllib h_score loop"
    impls: dict[str, Impl | str] = {
        ours: Impl(lambda: pixelwise_h_score(f, maps, C, backend=backend), tol=1e-4),
        loop: Impl(lambda: [tllib_h_score(fn, mn[:, p]) for p in range(pixels)], anchor=True,
                   scale=P / pixels, take=pixels, tol=1e-6),
    }
    return Workload(
        op="hscore", family=f"pixel-wise, d={d}, C={C}, N={N}", size=P, size_name="P",
        detail="fp32 features, uint8 label maps", subject=ours, impls=impls,
        reference=lambda: torch.cat([  # 64 pixels at a time: the one-hot is (P, N, C)
            pixelwise_h_score(f.double(), maps[:, p:p + 64], C, backend="reference")
            for p in range(0, P, 64)]),
        targets=[Target(loop, 100.0)] if P == 4096 else [],
        work=Work(flops=2.0 * N * P * d + N * d * d, bytes=4.0 * N * d + N * P),
        rounds={"tiny": 1, "quick": 2, "full": 1}[size])


def workloads(size: str, device: str = "cpu") -> list[Workload]:
    d, C, Ns = ONE_SHOT[size]
    out = [_one_shot(N, d, C, size, device, None) for N in Ns]
    out += [_one_shot(N, d, C, size, device, "ledoit-wolf") for N in Ns]
    d, C, N, Ps = PIXEL[size]
    return out + [_pixel(P, d, C, N, size, device) for P in Ps]

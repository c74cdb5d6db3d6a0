"""H-score (issue 6): one-shot scoring at N=50k, d=2048, C=100 (float32) and pixel-wise
scores at N=20k, d=128, P=4096, C=16, one thread.

Anchors in the same run: a faithful re-implementation of tllib's ``h_score`` (numpy, np.cov
in float64, explicit ``pinv``) and of its Ledoit-Wolf ``regularized_h_score`` (written here,
not copied), this package's float64 reference; for the pixel-wise case the per-pixel loop
(tllib-style H-score of every pixel's labels), timed on a few pixels and scaled linearly.
Targets: >= 3x tllib at equal or better accuracy, extra peak memory <= 0.4 GB; pixel-wise
>= 100x the per-pixel loop.

    python -m bench.report hscore [--quick]
    pytest bench/bench_hscore.py --benchmark-enable
"""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.covariance import LedoitWolf

from bench.common import Case, pin_one_thread
from pytransfer.hscore import h_score, pixelwise_h_score
from pytransfer.hscore.reference import h_score_reference

LOOP_PIXELS = 8  # the per-pixel loop is timed on this many pixels and scaled to P


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


def problem(N: int, d: int, C: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, C, (N,), generator=gen)
    f = torch.randn(N, d, generator=gen)
    f += 0.3 * torch.randn(C, d, generator=gen)[y]
    f += 3.0  # a common offset, as in real activations
    return f, y


def candidates(N: int, d: int, C: int) -> dict:
    f, y = problem(N, d, C)
    fn, yn = f.numpy(), y.numpy()
    return {
        "pytransfer cpu": lambda: h_score(f, y, num_classes=C, backend="cpu"),
        "pytransfer cpu ledoit-wolf": lambda: h_score(f, y, num_classes=C,
                                                      shrinkage="ledoit-wolf", backend="cpu"),
        "pytransfer reference (fp64)": lambda: h_score_reference(f, y, C),
        "tllib h_score (pinv)": lambda: tllib_h_score(fn, yn),
        "tllib regularized_h_score": lambda: tllib_regularized_h_score(fn, yn),
    }


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _peak_child(label, N, d, C, queue):
    torch.set_num_threads(1)
    candidates(512, 8, C)[label]()  # one-time library initialisation is not counted
    fns = candidates(N, d, C)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM) to now
    base = _status_kb("VmRSS")
    fns[label]()
    queue.put((_status_kb("VmHWM") - base) / 2**20)


def peak_extra_gb(label: str, N: int, d: int, C: int) -> float:
    """Peak RSS above the inputs (GB) of one candidate, measured in a fresh process (Linux:
    the high-water mark is reset after the inputs are built)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_peak_child, args=(label, N, d, C, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def _main_metrics(N, d, C):
    def metrics():
        f, y = problem(N, d, C)
        exact = float(h_score_reference(f, y, C))
        ours = float(h_score(f, y, num_classes=C, backend="cpu"))
        tl = tllib_h_score(f.numpy(), y.numpy())
        return {
            "relative error vs fp64 reference: pytransfer cpu": (abs(ours - exact) / exact,
                                                                 None, "<="),
            "relative error vs fp64 reference: tllib": (abs(tl - exact) / exact, None, "<="),
            "extra peak memory (GB): pytransfer cpu": (peak_extra_gb("pytransfer cpu", N, d, C),
                                                       0.4, "<="),
            "extra peak memory (GB): tllib": (peak_extra_gb("tllib h_score (pinv)", N, d, C),
                                              None, "<="),
        }
    return metrics


def pixel_problem(N: int, d: int, P: int, C: int, seed: int = 1):
    """Features and uint8 label maps whose classes depend on the features pixel by pixel."""
    gen = torch.Generator().manual_seed(seed)
    f = torch.randn(N, d, generator=gen)
    maps = torch.empty(N, P, dtype=torch.uint8)
    for p0 in range(0, P, 64):
        w = torch.randn(d, C, generator=gen)
        logits = (f @ w)[:, None, :] + 3 * torch.randn(N, min(64, P - p0), C, generator=gen)
        maps[:, p0:p0 + 64] = torch.argmax(logits, -1)
    return f, maps


def per_pixel_loop(f: torch.Tensor, maps: torch.Tensor, pixels: int):
    fn, mn = f.numpy(), maps[:, :pixels].numpy()
    return lambda: [tllib_h_score(fn, mn[:, p]) for p in range(pixels)]


def cases(quick: bool = False) -> list[Case]:
    pin_one_thread()
    import numba

    numba.set_num_threads(1)
    N, d, C = (5000, 256, 20) if quick else (50_000, 2048, 100)
    cands = candidates(N, d, C)
    main = Case(op="hscore", name=f"N={N} d={d} C={C} fp32", subject="pytransfer cpu",
                candidates={k: v for k, v in cands.items() if "ledoit" not in k
                            and "regularized" not in k},
                targets={"tllib h_score (pinv)": 3.0}, metrics=_main_metrics(N, d, C), rounds=1)
    reg = Case(op="hscore", name=f"N={N} d={d} C={C} fp32, Ledoit-Wolf",
               subject="pytransfer cpu ledoit-wolf",
               candidates={k: cands[k] for k in ("pytransfer cpu ledoit-wolf",
                                                 "tllib regularized_h_score")},
               targets={"tllib regularized_h_score": 3.0}, rounds=1)
    Np, dp, P, Cp = (2000, 32, 256, 8) if quick else (20_000, 128, 4096, 16)
    f, maps = pixel_problem(Np, dp, P, Cp)
    loop_label = f"per-pixel loop (timed on {LOOP_PIXELS}, x{P / LOOP_PIXELS:g})"
    pix = Case(op="hscore", name=f"pixel-wise N={Np} d={dp} P={P} C={Cp} fp32",
               subject="pytransfer cpu (numba)",
               candidates={"pytransfer cpu (numba)": lambda: pixelwise_h_score(
                   f, maps, Cp, backend="cpu"),
                   loop_label: per_pixel_loop(f, maps, LOOP_PIXELS)},
               targets={loop_label: 100.0}, scale={loop_label: P / LOOP_PIXELS}, rounds=1)
    return [main, reg, pix]


# ------------------------------------------------------------- pytest-benchmark suite
@pytest.mark.parametrize("label", ["pytransfer cpu", "tllib h_score (pinv)"])
def test_hscore_n20k_d512(benchmark, label):
    fn = candidates(20_000, 512, 50)[label]
    benchmark.pedantic(fn, rounds=2, warmup_rounds=1)


def test_pixelwise_n5k(benchmark):
    f, maps = pixel_problem(5000, 64, 1024, 16)
    benchmark.pedantic(lambda: pixelwise_h_score(f, maps, 16, backend="cpu"), rounds=2,
                       warmup_rounds=1)


def test_benchmark_anchors_agree():
    f, y = problem(3000, 64, 10)
    want = float(h_score_reference(f, y, 10))
    assert float(h_score(f, y, backend="cpu")) == pytest.approx(want, rel=1e-6)
    # tllib uses 1/(N-1) for both covariances: the same H (the normalisers cancel)
    assert tllib_h_score(f.numpy(), y.numpy()) == pytest.approx(want, rel=1e-6)

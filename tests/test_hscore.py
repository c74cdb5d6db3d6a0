"""H-score (issue 6): values against an independent numpy formula, streaming/merge/all_reduce
exactness, float32 precision under a large offset, invariants, shrinkage, ops."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.covariance import ledoit_wolf

from pytransfer.hscore import HScoreStats, _ops, h_score
from pytransfer.hscore.reference import h_score_reference, ledoit_wolf_reference, stats_reference


def np_h_score(f: np.ndarray, y: np.ndarray, shrinkage: float = 0.0) -> float:
    """tr(cov(f)^-1 cov(E[f|Y])) with explicit covariances (1/N) and np.linalg.solve."""
    f = np.asarray(f, dtype=np.float64)
    cov = np.cov(f, rowvar=False, bias=True).reshape(f.shape[1], f.shape[1])
    cov = (1 - shrinkage) * cov + shrinkage * np.trace(cov) / f.shape[1] * np.eye(f.shape[1])
    m = f.mean(0)
    covg = np.zeros_like(cov)
    for c in np.unique(y):
        mc = f[y == c].mean(0) - m
        covg += (y == c).mean() * np.outer(mc, mc)
    return float(np.trace(np.linalg.solve(cov, covg)))


def problem(N, d, C, T=None, *, seed=0, dtype=torch.float64, sep=0.7):
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, C, (N,), generator=gen)
    y[:C] = torch.arange(C)  # every class present
    shape = (N, d) if T is None else (T, N, d)
    f = torch.randn(*shape, generator=gen, dtype=torch.float64)
    centers = torch.randn(C, d, generator=gen, dtype=torch.float64) * sep
    f = f + centers[y]
    f = f @ (torch.eye(d, dtype=torch.float64) + 0.3 * torch.randn(d, d, generator=gen,
                                                                   dtype=torch.float64))
    return f.to(dtype), y


@pytest.mark.parametrize("N,d,C,T", [(101, 5, 3, None), (64, 7, 2, 3), (33, 4, 2, None),
                                     (257, 40, 6, 2)])
def test_matches_numpy(backend, N, d, C, T):
    f, y = problem(N, d, C, T)
    got = h_score(f, y, backend=backend)
    fs = f if T is not None else f[None]
    want = torch.tensor([np_h_score(x.numpy(), y.numpy()) for x in fs], dtype=torch.float64)
    assert got.shape == (() if T is None else (T,))
    torch.testing.assert_close(got.reshape(-1), want, rtol=1e-10, atol=0)


@pytest.mark.parametrize("backend_", ["cpu", "triton"])
def test_float32_matches_numpy(backend_):
    f, y = problem(150, 20, 4, 2, dtype=torch.float32)
    want = torch.tensor([np_h_score(x.double().numpy(), y.numpy()) for x in f])
    torch.testing.assert_close(h_score(f, y, backend=backend_), want.double(), rtol=1e-5, atol=0)


def test_streaming_uneven_chunks_and_merge_equal_one_shot(backend):
    f, y = problem(301, 9, 5, 2, seed=1)
    f = f + 50.0  # an offset, so the shifts of the shards differ
    one = HScoreStats(9, 5, backend=backend).update(f, y)
    stream = HScoreStats(9, 5, backend=backend)
    for a, b in [(0, 1), (1, 8), (8, 150), (150, 151), (151, 301)]:
        stream.update(f[:, a:b], y[a:b])
    shards = [HScoreStats(9, 5, backend=backend).update(f[:, a:b] * 1.0, y[a:b])
              for a, b in [(0, 100), (100, 101), (101, 301)]]
    shards[1]._reshift(shards[1].shift + 3.0)  # a shard kept about a far shift
    merged = HScoreStats(9, 5).merge(shards[0]).merge(shards[1]).merge(shards[2])
    want = torch.tensor([np_h_score(x.numpy(), y.numpy()) for x in f], dtype=torch.float64)
    for s in (one, stream, merged):
        torch.testing.assert_close(s.h_score(), want, rtol=1e-10, atol=0)
        torch.testing.assert_close(s.ledoit_wolf(), one.ledoit_wolf(), rtol=1e-10, atol=0)
        torch.testing.assert_close(s.h_score("ledoit-wolf"), one.h_score("ledoit-wolf"),
                                   rtol=1e-10, atol=0)


def test_cpu_chunks_and_blocks_match_reference(monkeypatch):
    """The CPU kernel's row chunks and block-triangular GEMM give the reference statistics."""
    monkeypatch.setattr(_ops, "CPU_BLOCK", 4)
    f, y = problem(53, 11, 3, 2)
    shift = f.mean(1) + 0.25
    got = _ops.hscore_stats_cpu(f, y, shift, 3, 7)
    for a, b in zip(got, stats_reference(f, y, shift, 3)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-11)


def _all_reduce_worker(rank, path, f, y, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=2)
    part = slice(0, 70) if rank == 0 else slice(70, None)
    s = HScoreStats(f.shape[-1], 4).update(f[part], y[part])
    if rank == 1:
        s.update(f[:0], y[:0])  # an empty update is fine
    s.all_reduce()
    out[rank] = s.h_score()
    dist.destroy_process_group()


def test_all_reduce_two_process_gloo():
    f, y = problem(171, 6, 4, seed=3)
    f[70:] += 10.0
    out = torch.zeros(2, dtype=torch.float64).share_memory_()
    with tempfile.TemporaryDirectory() as tmp:
        torch.multiprocessing.spawn(_all_reduce_worker,
                                    args=(os.path.join(tmp, "init"), f, y, out), nprocs=2)
    want = np_h_score(f.numpy(), y.numpy())
    torch.testing.assert_close(out, torch.full((2,), want, dtype=torch.float64), rtol=1e-10,
                               atol=0)


@pytest.mark.parametrize("backend_", ["cpu", "triton"])
def test_float32_large_offset_keeps_precision(backend_):
    gen = torch.Generator().manual_seed(4)
    N, d, C = 400, 6, 3
    y = torch.randint(0, C, (N,), generator=gen)
    f = (1e4 + torch.randn(N, d, generator=gen) + 0.5 * torch.randn(C, d, generator=gen)[y])
    f = f.float()
    exact = np_h_score(f.double().numpy(), y.numpy())  # fp64 on the same float32 values
    got = float(h_score(f, y, backend=backend_))
    assert abs(got - exact) <= 1e-6 * exact
    # The naive float32 formula sum f f^T / N - m m^T cancels ~8 digits: it is far off.
    s2 = f.T @ f / N
    m = f.mean(0)
    naive_cov = s2 - torch.outer(m, m)
    true_cov = torch.from_numpy(np.cov(f.double().numpy(), rowvar=False, bias=True))
    assert float((naive_cov.double() - true_cov).abs().max()) > 1e-2


@settings(max_examples=25, deadline=None)
@given(N=st.integers(12, 60), d=st.integers(1, 6), C=st.integers(2, 5), seed=st.integers(0, 99))
def test_bounds_and_backends_agree(N, d, C, seed):
    if N - 1 <= d:
        return
    f, y = problem(N, d, C, seed=seed)
    h = float(h_score(f, y, num_classes=C, backend="reference"))
    present = len(torch.unique(y))
    assert -1e-12 <= h <= min(d, present - 1) + 1e-9
    assert abs(float(h_score(f, y, num_classes=C, backend="cpu")) - h) <= 1e-10 * max(h, 1e-3)


def test_invariant_to_invertible_affine_maps():
    f, y = problem(200, 8, 4, seed=5)
    gen = torch.Generator().manual_seed(6)
    A = torch.randn(8, 8, generator=gen, dtype=torch.float64) + 3 * torch.eye(8)
    b = torch.randn(8, generator=gen, dtype=torch.float64) * 100
    torch.testing.assert_close(h_score(f @ A + b, y), h_score(f, y), rtol=1e-9, atol=0)


def test_higher_order_concatenation_scores_at_least_each_part():
    f, y = problem(300, 10, 5, seed=7)
    f1, f2 = f[:, :4], f[:, 4:]
    both = h_score(torch.cat([f1, f2], -1), y)
    assert both >= max(h_score(f1, y), h_score(f2, y)) - 1e-12
    torch.testing.assert_close(both, h_score(f, y))


def test_few_samples_is_an_error_not_saturation():
    f, y = problem(8, 7, 3)  # N - 1 = 7 <= d = 7
    covf = np.cov(f.numpy(), rowvar=False)
    g = np.zeros_like(f.numpy())
    for c in range(3):
        g[y.numpy() == c] = f.numpy()[y.numpy() == c].mean(0)
    pinv_h = np.trace(np.linalg.pinv(covf, rcond=1e-15) @ np.cov(g, rowvar=False))
    assert abs(pinv_h - 2.0) < 1e-6  # what tllib's pinv silently returns: C - 1
    with pytest.raises(ValueError, match="saturates at C - 1"):
        h_score(f, y)
    h = float(h_score(f, y, shrinkage=0.5))  # shrunk: not bounded by C - 1, but finite
    assert h == pytest.approx(np_h_score(f.numpy(), y.numpy(), shrinkage=0.5), rel=1e-10)


@pytest.mark.parametrize("s", [0.0, 0.3, 1.0])
def test_float_shrinkage_matches_numpy(s):
    f, y = problem(90, 6, 3, seed=8)
    assert float(h_score(f, y, shrinkage=s)) == pytest.approx(np_h_score(f.numpy(), y.numpy(),
                                                                         s), rel=1e-10)


@pytest.mark.parametrize("N,d", [(40, 30), (200, 5), (25, 60)])
def test_ledoit_wolf_matches_sklearn(N, d):
    f, y = problem(N, d, 3, seed=9)
    _, want = ledoit_wolf(f.numpy())
    stats = HScoreStats(d, 3, chunk_size=7)
    for a in range(0, N, 13):
        stats.update(f[a:a + 13], y[a:a + 13])
    assert float(stats.ledoit_wolf()) == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert float(ledoit_wolf_reference(f)) == pytest.approx(want, rel=1e-9, abs=1e-12)
    h = float(h_score(f, y, shrinkage="ledoit-wolf"))
    assert h == pytest.approx(np_h_score(f.numpy(), y.numpy(), want), rel=1e-9)


def test_dead_and_dependent_columns_are_reported():
    f, y = problem(50, 5, 3)
    dead = f.clone()
    dead[:, 2] = 7.25
    with pytest.raises(ValueError, match=r"constant \(dead\) columns.*\[2\]"):
        h_score(dead, y)
    with pytest.raises(ValueError, match=r"constant \(dead\) columns.*\[2\]"):
        h_score(dead.float(), y, backend="cpu")
    dep = torch.cat([f, f[:, :1] + f[:, 1:2]], 1)
    with pytest.raises(ValueError, match=r"singular or not positive definite.*shrinkage"):
        h_score(dep, y)
    assert float(h_score(dead, y, shrinkage=0.1)) > 0


def test_absent_classes_are_skipped_and_reported():
    f, y = problem(60, 3, 3)
    y = torch.where(y == 1, 2, y)
    with pytest.warns(UserWarning, match=r"classes \[1, 3, 4\] have no sample"):
        h = h_score(f, y, num_classes=5)
    assert float(h) == pytest.approx(np_h_score(f.numpy(), y.numpy()), rel=1e-10)
    assert HScoreStats(3, 5).update(f, y).absent_classes() == [1, 3, 4]


def test_noncontiguous_inputs_and_int32_labels(backend):
    f, y = problem(70, 5, 3, 2)
    ft = f.transpose(1, 2).contiguous().transpose(1, 2)  # same values, column-major
    ys = torch.stack([y, y], 1).to(torch.int32)[:, 0]
    assert not ft.is_contiguous() and not ys.is_contiguous()
    torch.testing.assert_close(h_score(ft, ys, backend=backend), h_score(f, y), rtol=1e-10,
                               atol=0)


def test_reference_gradcheck():
    f, y = problem(20, 3, 3)
    f.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: h_score_reference(x, y, 3), (f,))
    assert torch.autograd.gradcheck(lambda x: h_score_reference(x, y, 3, 0.2), (f,))
    g = torch.autograd.grad(h_score(f, y, backend="reference"), f)[0]
    assert torch.isfinite(g).all() and g.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("op", [_ops.hscore_stats_cpu, _ops.hscore_stats_triton])
def test_opcheck_stats(op, dtype):
    f, y = problem(19, 5, 3, 2, dtype=dtype)
    torch.library.opcheck(op, (f, y, f.double().mean(1), 3, 8))


@pytest.mark.parametrize("op", [_ops.hscore_segment_sq_cpu, _ops.hscore_segment_sq_triton])
def test_opcheck_segment(op):
    g, _ = problem(17, 4, 3)
    labels = torch.randint(0, 3, (17, 5), generator=torch.Generator().manual_seed(0))
    torch.library.opcheck(op, (g, labels, 3))

"""gaussian_lautum(distributed=True) and LautumLoss(distributed=True) on 2 gloo processes equal
the single-process values on the concatenated batch, with the gradients w.r.t. each rank's
rows."""

import pytest
import torch
import torch.distributed as dist
from gloo import run_gloo

from pytransfer.lautum import gaussian_lautum
from pytransfer.nn import LautumLoss

WORLD = 2
ROWS = 16  # per rank: uneven shards would work too; equal keeps the slicing simple


def _batch():
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(2 * ROWS, 3, generator=gen, dtype=torch.float64)
    v = 0.6 * u @ torch.randn(3, 4, generator=gen, dtype=torch.float64) + torch.randn(
        2 * ROWS, 4, generator=gen, dtype=torch.float64) + 5.0
    x = torch.randn(2 * ROWS, 2, 5, generator=gen, dtype=torch.float64)
    return u, v, x


def _values(u, v, x, distributed):
    out = []
    for backend in ("reference", "cpu"):
        a, b = u.clone().requires_grad_(True), v.clone().requires_grad_(True)
        value = gaussian_lautum(a, b, distributed=distributed, backend=backend)
        value.backward()
        out.append((value.detach(), a.grad, b.grad))
    f = v.clone().requires_grad_(True)
    loss = LautumLoss(10, 4, p=3, q=2, seed=1, distributed=distributed)(x, f)
    loss.backward()
    out.append((loss.detach(), f.grad))
    return out


def _worker(rank):
    rows = slice(ROWS * rank, ROWS * rank + ROWS)
    u, v, x = _batch()
    return _values(u[rows], v[rows], x[rows], True)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_distributed_equals_global_batch(tmp_path):
    ranks = run_gloo(_worker, WORLD, tmp_path)
    want = _values(*_batch(), False)
    for r, got in enumerate(ranks):
        rows = slice(ROWS * r, ROWS * r + ROWS)
        for g, w in zip(got, want):
            torch.testing.assert_close(g[0], w[0], rtol=1e-12, atol=1e-14)
            for gg, ww in zip(g[1:], w[1:]):
                torch.testing.assert_close(gg, ww[rows], rtol=1e-10, atol=1e-13)


def _method_worker(rank):
    from dataclasses import replace

    from pytransfer.methods.lautum import LautumConfig, digits_task, run_one

    cfg = replace(LautumConfig(), pre_steps=3, post_steps=3, eval_every=3, batch=32)
    return [run_one(m, 50, 0, digits_task(), cfg).record for m in ("lautum", "te")]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_lautum_and_te_training_equal_one_process(tmp_path):
    """Lautum's global statistics and TE's global-batch augmentation draws and ensemble
    updates make a 2-process run follow the 1-process run."""
    from dataclasses import replace

    from pytransfer.methods.lautum import LautumConfig, digits_task, run_one

    ranks = run_gloo(_method_worker, WORLD, tmp_path)
    cfg = replace(LautumConfig(), pre_steps=3, post_steps=3, eval_every=3, batch=32)
    want = [run_one(m, 50, 0, digits_task(), cfg).record for m in ("lautum", "te")]
    for recs in ranks:
        for got, ref in zip(recs, want):
            assert got["test_acc"] == pytest.approx(ref["test_acc"], abs=1e-9)
            for g, w in zip(got["curve"], ref["curve"]):
                assert g.keys() == w.keys()
                for k in g:
                    assert g[k] == pytest.approx(w[k], rel=1e-4, abs=1e-6), k

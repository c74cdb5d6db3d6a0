"""gaussian_lautum(distributed=True) and LautumLoss(distributed=True) on 2 gloo processes equal
the single-process values on the concatenated batch, with the gradients w.r.t. each rank's
rows."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

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


def _worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    rows = slice(ROWS * rank, ROWS * rank + ROWS)
    u, v, x = _batch()
    torch.save(_values(u[rows], v[rows], x[rows], True), os.path.join(out_dir, f"r{rank}.pt"))
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_distributed_equals_global_batch(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    want = _values(*_batch(), False)
    for r in range(WORLD):
        got = torch.load(tmp_path / f"r{r}.pt")
        rows = slice(ROWS * r, ROWS * r + ROWS)
        for g, w in zip(got, want):
            torch.testing.assert_close(g[0], w[0], rtol=1e-12, atol=1e-14)
            for gg, ww in zip(g[1:], w[1:]):
                torch.testing.assert_close(gg, ww[rows], rtol=1e-10, atol=1e-13)


def _method_worker(rank, port, out_dir):
    from dataclasses import replace

    from pytransfer.methods.lautum import LautumConfig, digits_task, run_one

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    cfg = replace(LautumConfig(), pre_steps=3, post_steps=3, eval_every=3, batch=32)
    recs = [run_one(m, 50, 0, digits_task(), cfg).record for m in ("lautum", "te")]
    torch.save(recs, os.path.join(out_dir, f"m{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_lautum_and_te_training_equal_one_process(tmp_path):
    """Lautum's global statistics and TE's global-batch augmentation draws and ensemble
    updates make a 2-process run follow the 1-process run."""
    from dataclasses import replace

    from pytransfer.methods.lautum import LautumConfig, digits_task, run_one

    mp.spawn(_method_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    cfg = replace(LautumConfig(), pre_steps=3, post_steps=3, eval_every=3, batch=32)
    want = [run_one(m, 50, 0, digits_task(), cfg).record for m in ("lautum", "te")]
    for r in range(WORLD):
        for got, ref in zip(torch.load(tmp_path / f"m{r}.pt"), want):
            assert got["test_acc"] == pytest.approx(ref["test_acc"], abs=1e-9)
            for g, w in zip(got["curve"], ref["curve"]):
                assert g.keys() == w.keys()
                for k in g:
                    assert g[k] == pytest.approx(w[k], rel=1e-4, abs=1e-6), k

"""MKMMDLoss(distributed=True) on 2 gloo processes equals the single-process loss on the
concatenated batch: values and gradients w.r.t. every rank's rows."""

import pytest
import torch
import torch.distributed as dist
from gloo import run_gloo

from pytransfer.mmd import gaussian_kernels
from pytransfer.nn.mmd_loss import MKMMDLoss

WORLD = 2
CONFIGS = [{"estimator": "linear"}, {"estimator": "quadratic"},
           {"estimator": "linear", "optimize_weights": True}]


def _batch():
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(12, 3, generator=gen, dtype=torch.float64),
            torch.randn(12, 3, generator=gen, dtype=torch.float64) + 0.5)


def _worker(rank):
    xs, xt = _batch()
    rows = slice(6 * rank, 6 * rank + 6)
    results = []
    for cfg in CONFIGS:
        x, y = xs[rows].clone().requires_grad_(True), xt[rows].clone().requires_grad_(True)
        loss = MKMMDLoss(kernels=gaussian_kernels(5), distributed=True, backend="cpu", **cfg)
        value = loss(x, y)
        value.backward()
        results.append((value.detach(), x.grad, y.grad))
    return results


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_distributed_equals_global_batch(tmp_path):
    ranks = run_gloo(_worker, WORLD, tmp_path)
    xs, xt = _batch()
    for k, cfg in enumerate(CONFIGS):
        x, y = xs.clone().requires_grad_(True), xt.clone().requires_grad_(True)
        value = MKMMDLoss(kernels=gaussian_kernels(5), backend="cpu", **cfg)(x, y)
        value.backward()
        for r in range(WORLD):
            got, gx, gy = ranks[r][k]
            torch.testing.assert_close(got, value.detach(), rtol=1e-12, atol=1e-15)
            torch.testing.assert_close(gx, x.grad[6 * r:6 * r + 6], rtol=1e-10, atol=1e-14)
            torch.testing.assert_close(gy, y.grad[6 * r:6 * r + 6], rtol=1e-10, atol=1e-14)

"""Triton kernels (issue 15, hardening 3, 6, 7), under the interpreter: 64-bit offsets and the
tile guard of the scaling kernel, warm-started absorbed problems, float32-or-better MMD
accumulation for half inputs."""

import inspect

import pytest
import torch

pytest.importorskip("triton")

from pytransfer import _dispatch
from pytransfer.mmd import _ops as mmd_ops
from pytransfer.mmd.reference import mmd_linear_reference
from pytransfer.ot import _ops as ot_ops
from pytransfer.ot import scaling, sinkhorn


# ---------------------------------------------------------------- hardening 3
def test_scaling_kernel_offsets_are_64_bit():
    """probs * n overflowed int32 at B * n >= 2^31: the problem index is int64 from the start."""
    from pytransfer.kernels import sinkhorn_scaling

    src = inspect.getsource(sinkhorn_scaling._sinkhorn_scaling_kernel.fn)
    assert "probs = tl.program_id(0).to(tl.int64) * BLOCK_B" in src


@pytest.mark.parametrize(("n", "m", "ok"), [
    (3, 5, True),      # padded to 16 x 16 (tl.dot's minimum) plus 16 problems' scalings
    (64, 64, True),    # 4096 + 16 * 128
    (128, 64, True),   # 8192 + 16 * 192 = 11264
    (128, 128, False),  # 16384 + 16 * 256 > 16384, though n * m = 16384 fits the log kernel
    (129, 16, True),   # 256 * 16 + 16 * 272
    (1000, 3, False),  # 1024 * 16 + 16 * 1040
])
def test_scaling_tile_guard_counts_padding_and_block_b(n, m, ok):
    from pytransfer.kernels.sinkhorn_scaling import launch_shape

    grid, bb, bn, bm = launch_shape(33, n, m)
    assert grid == 3 and bn >= max(16, n) and bm >= max(16, m)
    assert (bn * bm + bb * (bn + bm) <= ot_ops.TRITON_MAX_TILE) == ok
    if ok:
        assert _dispatch.resolve(ot_ops.OP_SCALING, "triton", "cpu", n=n, m=m)[0] == "triton"
    else:
        with pytest.raises(_dispatch.BackendUnavailableError, match="padded to"):
            _dispatch.resolve(ot_ops.OP_SCALING, "triton", "cpu", n=n, m=m)


# ---------------------------------------------------------------- hardening 6
def test_absorbed_problems_warm_start_and_count_as_on_the_cpu(monkeypatch):
    """A tight safe range forces absorption mid-run: Triton continues each absorbed problem
    from its last in-range potentials (not from scratch), so n_iter equals the CPU's."""
    gen = torch.Generator().manual_seed(8)
    a = torch.rand(3, 5, dtype=torch.float64, generator=gen) + 0.05
    b = torch.rand(3, 4, dtype=torch.float64, generator=gen) + 0.05
    a, b = a / a.sum(-1, keepdim=True), b / b.sum(-1, keepdim=True)
    C = torch.rand(5, 4, dtype=torch.float64, generator=gen)
    monkeypatch.setitem(scaling.SAFE_RANGE, torch.float64, (0.05, 20.0))  # absorbed at it 1, 11
    calls = []  # (max_iter, g_init) of every log-domain continuation
    real = ot_ops.sinkhorn_log_triton
    monkeypatch.setattr(ot_ops, "sinkhorn_log_triton",
                        lambda *args: calls.append((args[4], args[6:])) or real(*args))
    kw = dict(tol=1e-6, max_iter=500, method="scaling")
    tri = sinkhorn(a, b, C, 0.1, backend="triton", **kw)
    cpu = sinkhorn(a, b, C, 0.1, backend="cpu", **kw)
    assert calls and all(len(g) == 1 and g[0] is not None for _, g in calls)  # warm started
    assert any(it < 500 for it, _ in calls)  # continued: only the iterations left
    assert torch.equal(tri.n_iter, cpu.n_iter)
    torch.testing.assert_close(tri.f, cpu.f, rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(tri.g, cpu.g, rtol=1e-8, atol=1e-9)


# ---------------------------------------------------------------- hardening 7
def _mmd_half(dtype):
    gen = torch.Generator().manual_seed(4)
    xs = (torch.randn(64, 8, generator=gen) * 3).to(dtype)
    xt = (torch.randn(64, 8, generator=gen) * 3 + 1).to(dtype)
    gammas = torch.tensor([0.005, 0.01, 0.02], dtype=torch.float32)
    w = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float32)
    return xs, xt, gammas, w, torch.tensor([0, 1, 1], dtype=torch.int32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_mmd_accumulates_half_inputs_in_float32_or_better(dtype):
    """A (half) Gram tile's sums equal those of the same values in float32: the pair weights
    W_ij (1/(n(n-1)) is subnormal in float16 at n = 300) and the partial sums are not stored in
    the input dtype. The linear estimate agrees with float64 to the input's precision."""
    from pytransfer.kernels.mmd import quadratic_tile

    xs, xt, gammas, w, sq = _mmd_half(dtype)
    want = mmd_linear_reference(xs.double(), xt.double(), gammas.double(), w.double())[1]
    h, _ = mmd_ops.mmd_linear_fwd_triton(xs, xt, gammas, w, sq)
    torch.testing.assert_close(h.double(), want, rtol=1e-2, atol=1e-3)
    gen = torch.Generator().manual_seed(5)
    X = torch.randn(40, 4, generator=gen).to(dtype)
    G = (X @ X.T).contiguous()
    norms = G.diagonal().contiguous()
    W = mmd_ops._pair_weights(300, 300)  # the weights of a 300 + 300 batch, on one tile
    out = {}
    for name, (g, nrm) in {"half": (G, norms), "float": (G.float(), norms.float())}.items():
        out[name] = torch.zeros(3, dtype=torch.float64)
        quadratic_tile(g, nrm, nrm, 0, 20, gammas, w, sq, W, False, out[name])
    torch.testing.assert_close(out["half"], out["float"], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_mk_mmd_half_inputs_agree_across_backends(dtype):
    from pytransfer.mmd import mk_mmd

    xs, xt, *_ = _mmd_half(dtype)
    want = mk_mmd(xs.double(), xt.double(), estimator="linear")
    for backend in ("cpu", "triton"):
        got = mk_mmd(xs, xt, estimator="linear", backend=backend)
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)

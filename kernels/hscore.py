"""H-score kernels in Triton.

``hscore_stats_triton``: one launch computes, for T feature sets, the Gram matrix of the
augmented rows [z | 1 | ||z||^2 | onehot(y)] against z (z = f - shift), restricted to the
tiles on or above the diagonal: that is sum z z^T, sum z, sum ||z||^2 z and the class sums
in one pass, with the one-hot columns generated in registers (never an N x C matrix).
Accumulation: each BLOCK_N-row slab is one ``tl.dot`` in the input precision (IEEE float32,
no TF32, for float32/float16/bfloat16 inputs; float64 for float64), added to a float64
accumulator. Error for float32 inputs: rounding of the shifted z to float32 (relative
6e-8 per entry) plus float32 accumulation over BLOCK_N = 32 rows, i.e. relative
~32 * 6e-8 = 2e-6 of sum |z_i z_j| in the worst case and ~1e-7 typically; the float64 sum
over slabs adds no error of that order.

``segment_sq_triton``: per pixel p and class tile, the class sums S_pc = sum_{y_np = c} g_n
of whitened features as a one-hot (in registers) times g product, reduced to ||S_pc||^2 and
n_pc; float64 accumulation across row slabs as above.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _stats_kernel(
    f_ptr, lab_ptr, r_ptr, shift_ptr, out_ptr, N, d, W, tiles_j,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    pid = tl.program_id(1)
    ti = pid // tiles_j
    tj = pid % tiles_j
    # lower-triangular tiles of the z-z block are the mirror of upper ones: skip them
    if (tj >= ti) | ((tj + 1) * BLOCK_D > d):
        ci = ti * BLOCK_D + tl.arange(0, BLOCK_D)
        cj = tj * BLOCK_D + tl.arange(0, BLOCK_D)
        sh_i = tl.load(shift_ptr + t * d + ci, mask=ci < d, other=0.0)
        sh_j = tl.load(shift_ptr + t * d + cj, mask=cj < d, other=0.0)
        acc = tl.zeros([BLOCK_D, BLOCK_D], dtype=tl.float64)
        for n0 in range(0, N, BLOCK_N):
            rows = (n0 + tl.arange(0, BLOCK_N)).to(tl.int64)
            rok = rows < N
            base = f_ptr + t * N * d + rows[:, None] * d
            mi = rok[:, None] & (ci[None, :] < d)
            a = tl.load(base + ci[None, :], mask=mi, other=0.0).to(tl.float64) - sh_i[None, :]
            a = tl.where(mi, a, 0.0).to(DOT)
            mj = rok[:, None] & (cj[None, :] < d)
            zj = tl.load(base + cj[None, :], mask=mj, other=0.0).to(tl.float64) - sh_j[None, :]
            lab = tl.load(lab_ptr + rows, mask=rok, other=-1)
            rr = tl.load(r_ptr + t * N + rows, mask=rok, other=0.0)
            extra = tl.where(cj[None, :] == d, 1.0,
                             tl.where(cj[None, :] == d + 1, rr[:, None],
                                      tl.where(lab[:, None] == cj[None, :] - d - 2, 1.0, 0.0)))
            b = tl.where(mj, zj, tl.where(rok[:, None] & (cj[None, :] < W), extra, 0.0))
            acc += tl.dot(tl.trans(a), b.to(DOT), input_precision="ieee",
                          out_dtype=DOT).to(tl.float64)
        omask = (ci[:, None] < d) & (cj[None, :] < W)
        tl.store(out_ptr + t * d * W + ci[:, None] * W + cj[None, :], acc, mask=omask)


def _dot_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def hscore_stats_triton(
    features: torch.Tensor, labels: torch.Tensor, shift: torch.Tensor, num_classes: int,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shifted statistics of contiguous (T, N, d) features; see ``hscore_stats_cpu``."""
    T, N, d = features.shape
    r = torch.cat([(features[:, s:s + chunk_size].double() - shift[:, None]).square().sum(-1)
                   for s in range(0, N, chunk_size)], 1) if N else features.new_zeros(
        T, 0, dtype=torch.float64)
    W = d + 2 + num_classes
    BLOCK_D = 32 if d <= 64 else 64
    tiles_i, tiles_j = triton.cdiv(d, BLOCK_D), triton.cdiv(W, BLOCK_D)
    out = torch.zeros(T, d, W, dtype=torch.float64, device=features.device)
    _stats_kernel[(T, tiles_i * tiles_j)](
        features, labels, r.contiguous(), shift, out, N, d, W, tiles_j,
        BLOCK_N=32, BLOCK_D=BLOCK_D, DOT=_dot_dtype(features.dtype),
    )
    tile = torch.arange(d, device=features.device) // BLOCK_D
    s2 = out[:, :, :d]
    s2 = torch.where(tile[None, :] >= tile[:, None], s2, s2.mT)
    return (out[:, :, d].contiguous(), s2.contiguous(),
            out[:, :, d + 2:].mT.contiguous(), out[:, :, d + 1].contiguous(),
            r.square().sum(1))


@triton.jit
def _segment_kernel(
    g_ptr, lab_ptr, sq_ptr, cnt_ptr, N, d, P, C,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr, DOT: tl.constexpr,
):
    p = tl.program_id(0).to(tl.int64)
    cls = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    sq = tl.zeros([BLOCK_C], dtype=tl.float64)
    cnt = tl.zeros([BLOCK_C], dtype=tl.float64)
    for d0 in range(0, d, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        acc = tl.zeros([BLOCK_C, BLOCK_D], dtype=tl.float64)
        for n0 in range(0, N, BLOCK_N):
            rows = (n0 + tl.arange(0, BLOCK_N)).to(tl.int64)
            rok = rows < N
            lab = tl.load(lab_ptr + rows * P + p, mask=rok, other=-1)
            onehot = tl.where(lab[None, :] == cls[:, None], 1.0, 0.0)
            if d0 == 0:
                cnt += tl.sum(onehot, 1)
            gt = tl.load(g_ptr + rows[:, None] * d + cols[None, :],
                         mask=rok[:, None] & (cols[None, :] < d), other=0.0)
            acc += tl.dot(onehot.to(DOT), gt.to(DOT), input_precision="ieee",
                          out_dtype=DOT).to(tl.float64)
        sq += tl.sum(acc * acc, 1)
    tl.store(sq_ptr + p * C + cls, sq, mask=cls < C)
    tl.store(cnt_ptr + p * C + cls, cnt, mask=cls < C)


def segment_sq_triton(
    g: torch.Tensor, label_maps: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(||S_pc||^2, n_pc), both (P, C) float64, for g (N, d) and label maps (N, P)."""
    N, d = g.shape
    P = label_maps.shape[1]
    sq = torch.empty(P, num_classes, dtype=torch.float64, device=g.device)
    cnt = torch.empty_like(sq)
    BLOCK_C = 16 if num_classes <= 16 else 32
    grid = (P, triton.cdiv(num_classes, BLOCK_C))
    _segment_kernel[grid](g, label_maps, sq, cnt, N, d, P, num_classes,
                          BLOCK_N=32, BLOCK_D=32 if d <= 32 else 64, BLOCK_C=BLOCK_C,
                          DOT=_dot_dtype(g.dtype))
    return sq, cnt

"""Online tiled log-sum-exp of point-cloud Sinkhorn in Triton (issue 12), flash-attention style.

One program per (problem, block of BLOCK_N outer points): it walks the inner points in blocks
of BLOCK_M, forms each cost tile from the coordinates (a d-loop of outer products), and folds
it into a running max and a rescaled running sum, so the (n, m) cost is never stored.
Accumulation is float32 (float64 for float64 inputs). Tested under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _lse_kernel(
    x_ptr, y_ptr, h_ptr, ok_ptr, out_ptr, n, m, d, inv_eps,
    P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, ACC: tl.constexpr,
):
    q = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < n
    mx = tl.full([BLOCK_N], float("-inf"), ACC)
    s = tl.zeros([BLOCK_N], ACC)
    for j0 in range(0, m, BLOCK_M):
        cols = j0 + tl.arange(0, BLOCK_M)
        cmask = cols < m
        sq = tl.zeros([BLOCK_N, BLOCK_M], ACC)
        for k in range(d):
            xk = tl.load(x_ptr + q * n * d + rows * d + k, mask=rmask, other=0.0).to(ACC)
            yk = tl.load(y_ptr + q * m * d + cols * d + k, mask=cmask, other=0.0).to(ACC)
            diff = xk[:, None] - yk[None, :]
            sq += diff * diff
        if P == 2:
            c = sq * 0.5
        else:
            c = tl.sqrt(sq)
        h = tl.load(h_ptr + q * m + cols, mask=cmask, other=0.0).to(ACC)
        ok = tl.load(ok_ptr + q * m + cols, mask=cmask, other=0) != 0
        v = tl.where(ok[None, :], (h[None, :] - c) * inv_eps, float("-inf"))
        new = tl.maximum(mx, tl.max(v, 1))
        safe = tl.where(new == float("-inf"), 0.0, new)
        s = s * tl.exp(mx - safe) + tl.sum(tl.where(ok[None, :], tl.exp(v - safe[:, None]), 0.0),
                                           1)
        mx = new
    tl.store(out_ptr + q * n + rows, mx + tl.log(s), mask=rmask)


def lse_pass(outer: torch.Tensor, inner: torch.Tensor, h: torch.Tensor, support: torch.Tensor,
             eps: float, p: int, block: int = 16) -> torch.Tensor:
    """out_i = LSE_j((h_j - C(outer_i, inner_j))/eps) over the supported j; outer (B, n, d),
    inner (B, m, d), h and support (B, m)."""
    B, n, d = outer.shape
    m = inner.shape[1]
    out_dtype = torch.float64 if outer.dtype == torch.float64 else torch.float32
    acc = tl.float64 if out_dtype == torch.float64 else tl.float32
    out = torch.empty((B, n), dtype=out_dtype, device=outer.device)
    ok = support.to(torch.int8).contiguous()
    _lse_kernel[(B, triton.cdiv(n, block))](
        outer.contiguous(), inner.contiguous(), h.contiguous(), ok, out, n, m, d, 1.0 / eps,
        P=p, BLOCK_N=block, BLOCK_M=block, ACC=acc,
    )
    return out

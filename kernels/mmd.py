"""MK-MMD in Triton, same results as ``pytransfer.mmd.reference``.

Linear estimator: one program per block of quad-tuples; the four squared distances are
accumulated over d in chunks, then all U kernels follow from them (one exp per run of
power-of-two bandwidths, the rest by squaring: see ``pytransfer.mmd.spec.resolve``). The
forward stores per-program per-kernel partial sums and four derivative coefficients per
tuple; the backward (a second grid over tuples x d-chunks) rebuilds the four row gradients
from them. Quadratic estimator: the element-wise pass over a Gram tile (cuBLAS GEMM
outside), partial sums per program, or the coefficient block W_ij phi'(D_ij) in place.
Accumulation in float32 (float64 for float64 inputs), whatever the input dtype (float16 and
bfloat16 load as float32); per-program partial sums are stored and summed in float64, as the
C++ kernels accumulate. Exp arguments clamped (-80 / -700).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _next_kernel(e, gam, D, squ, floor, tiny):
    s = e * e
    s = tl.where(s < tiny, 0.0, s)
    return tl.where(squ != 0, s, tl.exp(tl.maximum(-gam * D, floor)))


@triton.jit
def _linear_fwd_kernel(xs_ptr, xt_ptr, gam_ptr, w_ptr, sq_ptr, hpart_ptr, coef_ptr, P, d, U,
                       floor: tl.constexpr, tiny: tl.constexpr, BLOCK_P: tl.constexpr,
                       BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    pid = tl.program_id(0)
    p = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    pok = p < P
    row = 2 * p.to(tl.int64) * d
    d0 = tl.zeros([BLOCK_P], dtype=ACC)
    d1 = tl.zeros([BLOCK_P], dtype=ACC)
    d2 = tl.zeros([BLOCK_P], dtype=ACC)
    d3 = tl.zeros([BLOCK_P], dtype=ACC)
    for k0 in range(0, d, BLOCK_D):
        k = k0 + tl.arange(0, BLOCK_D)
        m = pok[:, None] & (k < d)[None, :]
        off = row[:, None] + k[None, :]
        s = tl.load(xs_ptr + off, mask=m, other=0.0).to(ACC)
        s2 = tl.load(xs_ptr + off + d, mask=m, other=0.0).to(ACC)
        t = tl.load(xt_ptr + off, mask=m, other=0.0).to(ACC)
        t2 = tl.load(xt_ptr + off + d, mask=m, other=0.0).to(ACC)
        d0 += tl.sum((s - s2) * (s - s2), 1)
        d1 += tl.sum((t - t2) * (t - t2), 1)
        d2 += tl.sum((s - t2) * (s - t2), 1)
        d3 += tl.sum((s2 - t) * (s2 - t), 1)
    e0 = tl.zeros([BLOCK_P], dtype=ACC)
    e1 = tl.zeros([BLOCK_P], dtype=ACC)
    e2 = tl.zeros([BLOCK_P], dtype=ACC)
    e3 = tl.zeros([BLOCK_P], dtype=ACC)
    c0 = tl.zeros([BLOCK_P], dtype=ACC)
    c1 = tl.zeros([BLOCK_P], dtype=ACC)
    c2 = tl.zeros([BLOCK_P], dtype=ACC)
    c3 = tl.zeros([BLOCK_P], dtype=ACC)
    for u in range(U):
        gam = tl.load(gam_ptr + u).to(ACC)
        wg = tl.load(w_ptr + u).to(ACC) * gam
        squ = tl.load(sq_ptr + u)
        e0 = _next_kernel(e0, gam, d0, squ, floor, tiny)
        e1 = _next_kernel(e1, gam, d1, squ, floor, tiny)
        e2 = _next_kernel(e2, gam, d2, squ, floor, tiny)
        e3 = _next_kernel(e3, gam, d3, squ, floor, tiny)
        g = tl.where(pok, e0 + e1 - e2 - e3, 0.0)
        tl.store(hpart_ptr + pid * U + u, tl.sum(g, 0))
        c0 -= wg * e0
        c1 -= wg * e1
        c2 -= wg * e2
        c3 -= wg * e3
    cp = coef_ptr + 4 * p.to(tl.int64)
    tl.store(cp, c0, mask=pok)
    tl.store(cp + 1, c1, mask=pok)
    tl.store(cp + 2, c2, mask=pok)
    tl.store(cp + 3, c3, mask=pok)


@triton.jit
def _linear_bwd_kernel(xs_ptr, xt_ptr, coef_ptr, grad_ptr, gxs_ptr, gxt_ptr, P, d,
                       BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    k = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    pok = p < P
    m = pok[:, None] & (k < d)[None, :]
    alpha = 2.0 * tl.load(grad_ptr).to(ACC) / P
    cp = coef_ptr + 4 * p.to(tl.int64)
    c0 = (alpha * tl.load(cp, mask=pok, other=0.0))[:, None]
    c1 = (alpha * tl.load(cp + 1, mask=pok, other=0.0))[:, None]
    c2 = (alpha * tl.load(cp + 2, mask=pok, other=0.0))[:, None]
    c3 = (alpha * tl.load(cp + 3, mask=pok, other=0.0))[:, None]
    off = 2 * p.to(tl.int64)[:, None] * d + k[None, :]
    s = tl.load(xs_ptr + off, mask=m, other=0.0).to(ACC)
    s2 = tl.load(xs_ptr + off + d, mask=m, other=0.0).to(ACC)
    t = tl.load(xt_ptr + off, mask=m, other=0.0).to(ACC)
    t2 = tl.load(xt_ptr + off + d, mask=m, other=0.0).to(ACC)
    a, b, c, e = s - s2, t - t2, s - t2, s2 - t
    tl.store(gxs_ptr + off, c0 * a - c2 * c, mask=m)
    tl.store(gxs_ptr + off + d, -c0 * a - c3 * e, mask=m)
    tl.store(gxt_ptr + off, c1 * b + c3 * e, mask=m)
    tl.store(gxt_ptr + off + d, -c1 * b + c2 * c, mask=m)


@triton.jit
def _tile_kernel(g_ptr, rn_ptr, cn_ptr, gam_ptr, w_ptr, sq_ptr, pw_ptr, hpart_ptr, R, N, row0,
                 ns, U, floor: tl.constexpr, tiny: tl.constexpr, BACKWARD: tl.constexpr,
                 BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, ACC: tl.constexpr):
    pr, pc = tl.program_id(0), tl.program_id(1)
    i = pr * BLOCK_R + tl.arange(0, BLOCK_R)
    j = pc * BLOCK_N + tl.arange(0, BLOCK_N)
    gi = row0 + i
    ok = (i < R)[:, None] & (j < N)[None, :] & (gi[:, None] != j[None, :])
    off = i.to(tl.int64)[:, None] * N + j[None, :]
    G = tl.load(g_ptr + off, mask=ok, other=0.0).to(ACC)
    rn = tl.load(rn_ptr + i, mask=i < R, other=0.0).to(ACC)
    cn = tl.load(cn_ptr + j, mask=j < N, other=0.0).to(ACC)
    D = tl.maximum(rn[:, None] + cn[None, :] - 2.0 * G, 0.0)
    rsrc = (gi < ns)[:, None]
    csrc = (j < ns)[None, :]
    wss = tl.load(pw_ptr).to(ACC)
    wtt = tl.load(pw_ptr + 1).to(ACC)
    wst = tl.load(pw_ptr + 2).to(ACC)
    W = tl.where(rsrc & csrc, wss, tl.where(rsrc | csrc, wst, wtt))
    W = tl.where(ok, W, 0.0)
    e = tl.zeros([BLOCK_R, BLOCK_N], dtype=ACC)
    C = tl.zeros([BLOCK_R, BLOCK_N], dtype=ACC)
    pid = pr * tl.num_programs(1) + pc
    for u in range(U):
        gam = tl.load(gam_ptr + u).to(ACC)
        e = _next_kernel(e, gam, D, tl.load(sq_ptr + u), floor, tiny)
        if BACKWARD:
            C -= tl.load(w_ptr + u).to(ACC) * gam * e
        else:
            tl.store(hpart_ptr + pid * U + u, tl.sum(tl.sum(W * e, 1), 0))
    if BACKWARD:
        inside = (i < R)[:, None] & (j < N)[None, :]
        tl.store(g_ptr + off, W * C, mask=inside)


def _acc(x: torch.Tensor):
    f64 = x.dtype == torch.float64
    return (tl.float64 if f64 else tl.float32), (-700.0 if f64 else -80.0), \
        (1e-300 if f64 else 1e-30)


def linear_fwd(xs, xt, gammas, weights, square, BLOCK_P: int = 16, BLOCK_D: int = 128):
    """(h (U,) per-kernel estimates, coef (P, 4)) over the first 2P rows, P = n // 2."""
    P, d = xs.shape[0] // 2, xs.shape[1]
    U = gammas.shape[0]
    acc, floor, tiny = _acc(xs)
    grid = triton.cdiv(P, BLOCK_P)
    hpart = torch.empty((grid, U), dtype=torch.float64, device=xs.device)
    coef = xs.new_empty((P, 4))
    _linear_fwd_kernel[(grid,)](xs, xt, gammas, weights, square, hpart, coef, P, d, U, floor,
                                tiny, BLOCK_P=BLOCK_P,
                                BLOCK_D=min(BLOCK_D, triton.next_power_of_2(d)), ACC=acc)
    return (hpart.sum(0) / P).to(xs.dtype), coef


def linear_bwd(xs, xt, coef, grad, BLOCK_P: int = 16, BLOCK_D: int = 128):
    P, d = coef.shape[0], xs.shape[1]
    acc, _, _ = _acc(xs)
    gxs, gxt = torch.zeros_like(xs), torch.zeros_like(xt)
    BLOCK_D = min(BLOCK_D, triton.next_power_of_2(d))
    grid = (triton.cdiv(P, BLOCK_P), triton.cdiv(d, BLOCK_D))
    _linear_bwd_kernel[grid](xs, xt, coef, grad.reshape(1).to(xs.dtype), gxs, gxt, P, d,
                             BLOCK_P=BLOCK_P, BLOCK_D=BLOCK_D, ACC=acc)
    return gxs, gxt


def quadratic_tile(G, rn, cn, row0, ns, gammas, weights, square, W, backward, h,
                   BLOCK_R: int = 32, BLOCK_N: int = 64):
    """Forward: adds sum_ij W_ij e_u(D_ij) to h (float64, U). Backward: G <- W phi'(D)."""
    R, N = G.shape
    U = gammas.shape[0]
    acc, floor, tiny = _acc(G)
    grid = (triton.cdiv(R, BLOCK_R), triton.cdiv(N, BLOCK_N))
    hpart = G.new_empty((1,) if backward else (grid[0] * grid[1], U), dtype=torch.float64)
    pw = torch.tensor(W, dtype=torch.float64, device=G.device)
    _tile_kernel[grid](G, rn, cn, gammas, weights, square, pw, hpart, R, N, row0, ns, U, floor,
                       tiny, BACKWARD=backward, BLOCK_R=BLOCK_R, BLOCK_N=BLOCK_N, ACC=acc)
    if not backward:
        h += hpart.sum(0)

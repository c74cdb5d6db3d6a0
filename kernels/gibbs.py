"""Gibbs-expectation kernels in Triton: one program per datum x, its S
samples (and K fields) padded to powers of two in registers.

Same results as ``pytransfer.free_energy.reference``: ``gibbs_weights`` (log-softmax over S
of -H - log e) with its backward, ``gibbs_moments`` (weighted means and covariances of K
fields) with its backward. Accumulation in the input dtype (float32 or float64).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _weights_fwd(h_ptr, q_ptr, out_ptr, S, BLOCK_S: tl.constexpr):
    x = tl.program_id(0).to(tl.int64)
    s = tl.arange(0, BLOCK_S)
    ok = s < S
    h = tl.load(h_ptr + x * S + s, mask=ok, other=0.0)
    q = tl.load(q_ptr + x * S + s, mask=ok, other=0.0)
    logit = tl.where(ok, -h - q, float("-inf"))
    mx = tl.max(logit, 0)
    lse = mx + tl.log(tl.sum(tl.where(ok, tl.exp(logit - mx), 0.0), 0))
    tl.store(out_ptr + x * S + s, logit - lse, mask=ok)


@triton.jit
def _weights_bwd(g_ptr, lw_ptr, out_ptr, S, BLOCK_S: tl.constexpr):
    x = tl.program_id(0).to(tl.int64)
    s = tl.arange(0, BLOCK_S)
    ok = s < S
    g = tl.load(g_ptr + x * S + s, mask=ok, other=0.0)
    lw = tl.load(lw_ptr + x * S + s, mask=ok, other=0.0)
    tl.store(out_ptr + x * S + s, tl.exp(lw) * tl.sum(g, 0) - g, mask=ok)


@triton.jit
def _moments_fwd(w_ptr, f_ptr, m_ptr, c_ptr, S, K, BLOCK_S: tl.constexpr, BLOCK_K: tl.constexpr):
    x = tl.program_id(0).to(tl.int64)
    s = tl.arange(0, BLOCK_S)
    k = tl.arange(0, BLOCK_K)
    fmask = (s[:, None] < S) & (k[None, :] < K)
    w = tl.load(w_ptr + x * S + s, mask=s < S, other=0.0)
    f = tl.load(f_ptr + x * S * K + s[:, None] * K + k[None, :], mask=fmask, other=0.0)
    m = tl.sum(w[:, None] * f, 0)
    d = tl.where(fmask, f - m[None, :], 0.0)
    wd = w[:, None] * d
    cov = tl.sum(wd[:, :, None] * d[:, None, :], 0)
    tl.store(m_ptr + x * K + k, m, mask=k < K)
    cmask = (k[:, None] < K) & (k[None, :] < K)
    tl.store(c_ptr + x * K * K + k[:, None] * K + k[None, :], cov, mask=cmask)


@triton.jit
def _moments_bwd(w_ptr, f_ptr, m_ptr, gm_ptr, gc_ptr, gw_ptr, gf_ptr, S, K,
                 BLOCK_S: tl.constexpr, BLOCK_K: tl.constexpr):
    x = tl.program_id(0).to(tl.int64)
    s = tl.arange(0, BLOCK_S)
    k = tl.arange(0, BLOCK_K)
    fmask = (s[:, None] < S) & (k[None, :] < K)
    cmask = (k[:, None] < K) & (k[None, :] < K)
    w = tl.load(w_ptr + x * S + s, mask=s < S, other=0.0)
    f = tl.load(f_ptr + x * S * K + s[:, None] * K + k[None, :], mask=fmask, other=0.0)
    m = tl.load(m_ptr + x * K + k, mask=k < K, other=0.0)
    gm = tl.load(gm_ptr + x * K + k, mask=k < K, other=0.0)
    gc = tl.load(gc_ptr + x * K * K + k[:, None] * K + k[None, :], mask=cmask, other=0.0)
    gct = tl.load(gc_ptr + x * K * K + k[None, :] * K + k[:, None], mask=cmask, other=0.0)
    d = tl.where(fmask, f - m[None, :], 0.0)
    # q[s, k] = sum_l (gc + gc^T)[k, l] d[s, l];  r[s, k] = sum_l gc[k, l] d[s, l]
    q = tl.sum((gc + gct)[None, :, :] * d[:, None, :], 2)
    r = tl.sum(gc[None, :, :] * d[:, None, :], 2)
    p = tl.sum(w[:, None] * q, 0)
    gw = tl.sum(f * (gm - p)[None, :] + d * r, 1)
    gf = w[:, None] * (gm[None, :] + q - p[None, :])
    tl.store(gw_ptr + x * S + s, gw, mask=s < S)
    tl.store(gf_ptr + x * S * K + s[:, None] * K + k[None, :], gf, mask=fmask)


def _block(n: int) -> int:
    return max(triton.next_power_of_2(n), 2)


def gibbs_weights_fwd(neg_log_joint: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    X, S = neg_log_joint.shape
    out = torch.empty_like(neg_log_joint)
    _weights_fwd[(X,)](neg_log_joint, log_q, out, S, BLOCK_S=_block(S))
    return out


def gibbs_weights_bwd(grad: torch.Tensor, log_w: torch.Tensor) -> torch.Tensor:
    X, S = grad.shape
    out = torch.empty_like(grad)
    _weights_bwd[(X,)](grad, log_w, out, S, BLOCK_S=_block(S))
    return out


def gibbs_moments_fwd(weights: torch.Tensor, fields: torch.Tensor):
    X, S, K = fields.shape
    means = fields.new_empty((X, K))
    cov = fields.new_empty((X, K, K))
    _moments_fwd[(X,)](weights, fields, means, cov, S, K, BLOCK_S=_block(S), BLOCK_K=_block(K))
    return means, cov


def gibbs_moments_bwd(weights, fields, means, grad_means, grad_cov):
    X, S, K = fields.shape
    gw = torch.empty_like(weights)
    gf = torch.empty_like(fields)
    _moments_bwd[(X,)](weights, fields, means, grad_means, grad_cov, gw, gf, S, K,
                       BLOCK_S=_block(S), BLOCK_K=_block(K))
    return gw, gf

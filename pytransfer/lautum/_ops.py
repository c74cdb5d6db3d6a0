"""torch.library registration of the Lautum statistics op and its backends.

``pytransfer::lautum_stats_{cpu,triton}``: for views u (B, p), v (B, q) and a constant shift
(p + q,), the float64 sums s1 = sum z and s2 = sum z z^T of z = [u | v] - shift: on CPU
block-triangular BLAS products; on GPU the H-score statistics Triton kernel (with a one-class
label vector). Both accumulate in float64 with float32 products inside one chunk (CPU) or
32-row slab (Triton) for float32 inputs. The op is differentiable: d/dz = g1 + z (G2 + G2^T)
for upstream gradients g1 of s1 and G2 of s2 (one GEMM).
"""

from __future__ import annotations

import torch

from pytransfer import _dispatch
from pytransfer.hscore import _ops as hscore_ops

OP_STATS = "lautum_stats"
#: rows per float32 product on CPU (the float64 accumulation happens between chunks)
CHUNK = 4096
#: column block of the CPU product: blocks below the diagonal are mirrored, not multiplied
BLOCK = 128


def _fake(u: torch.Tensor, v: torch.Tensor,
          shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    d = u.shape[1] + v.shape[1]
    return (u.new_empty(d, dtype=torch.float64), u.new_empty(d, d, dtype=torch.float64))


def _column_blocks(u: torch.Tensor, v: torch.Tensor) -> list[tuple[int, int, int]]:
    """(view, first, last) column blocks of [u | v], none straddling the two views."""
    return [(k, i, min(i + BLOCK, x.shape[1])) for k, x in enumerate((u, v))
            for i in range(0, x.shape[1], BLOCK)]


@torch.library.custom_op("pytransfer::lautum_stats_cpu", mutates_args=())
def lautum_stats_cpu(u: torch.Tensor, v: torch.Tensor,
                     shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum z, sum z z^T) of z = [u | v] - shift (shift rounded to the views' dtype), float64,
    without forming [u | v]. Per chunk of ``CHUNK`` rows, z is formed in the input dtype, its
    column sums are taken in that dtype, and only the column blocks of z^T z on or above the
    diagonal are BLAS products (10/16 of the full product at 4 blocks), all added to float64
    accumulators. Error for float32 inputs: float32 rounding of z plus float32 accumulation
    over one chunk."""
    p, q = u.shape[1], v.shape[1]
    s1 = torch.zeros(p + q, dtype=torch.float64)
    s2 = torch.zeros(p + q, p + q, dtype=torch.float64)
    blocks = _column_blocks(u, v)
    offset = (0, p)
    sh = (shift[:p].to(u.dtype), shift[p:].to(v.dtype))
    for start in range(0, u.shape[0], CHUNK):
        z = (u[start:start + CHUNK] - sh[0], v[start:start + CHUNK] - sh[1])
        s1[:p] += z[0].sum(0)
        s1[p:] += z[1].sum(0)
        for n, (k, i0, i1) in enumerate(blocks):
            a = z[k][:, i0:i1].mT
            for kk, j0, j1 in blocks[n:]:
                r0, c0 = offset[k] + i0, offset[kk] + j0
                s2[r0:r0 + i1 - i0, c0:c0 + j1 - j0] += (a @ z[kk][:, j0:j1]).double()
    return s1, torch.triu(s2) + torch.triu(s2, 1).mT


@torch.library.custom_op("pytransfer::lautum_stats_triton", mutates_args=())
def lautum_stats_triton(u: torch.Tensor, v: torch.Tensor,
                        shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """As ``lautum_stats_cpu``, by the H-score Triton statistics kernel (one launch)."""
    from pytransfer.kernels.hscore import hscore_stats_triton as launch

    x = torch.cat([u, v], 1)
    labels = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
    out = launch(x[None], labels, shift[None].contiguous(), 1,
                 hscore_ops.default_chunk(1, x.shape[1]))
    return out[0][0].clone(), out[1][0].clone()


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx, g1: torch.Tensor, g2: torch.Tensor):
    """d/du = g1_u + z_u G_uu + z_v G_vu and d/dv likewise, G = g2 + g2^T."""
    u, v, shift = ctx.saved_tensors
    p = u.shape[1]
    dtype = u.dtype if u.dtype in (torch.float32, torch.float64) else torch.float32
    zu, zv = u.to(dtype) - shift[:p].to(dtype), v.to(dtype) - shift[p:].to(dtype)
    g = (g2 + g2.mT).to(dtype)
    g1 = g1.to(dtype)
    # in place on each product (an addmm with the broadcast g1 as its input first copies
    # that into a (B, p) result: a pass over the output more)
    gu = torch.mm(zu, g[:p, :p]).addmm_(zv, g[p:, :p]).add_(g1[:p])
    gv = torch.mm(zu, g[:p, p:]).addmm_(zv, g[p:, p:]).add_(g1[p:])
    return gu.to(u.dtype), gv.to(v.dtype), None


for _op in (lautum_stats_cpu, lautum_stats_triton):
    _op.register_fake(_fake)
    _op.register_autograd(_backward, setup_context=_setup_context)


def stats_reference(u: torch.Tensor, v: torch.Tensor,
                    shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The specification: float64 sums of z = [u | v] - shift, differentiable by autograd."""
    z = torch.cat([u, v], 1).double() - shift
    return z.sum(0), z.mT @ z


_dispatch.register_backends(OP_STATS, reference=stats_reference, cpu=lautum_stats_cpu,
                            triton=lautum_stats_triton, cpu_unavailable=lambda: None)

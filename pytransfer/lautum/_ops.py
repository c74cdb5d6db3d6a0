"""torch.library registration of the Lautum statistics op and its backends.

``pytransfer::lautum_stats_{cpu,triton}``: for rows x (B, d) (the views side by side,
x = [u | v]) and a constant shift (d,), the float64 sums s1 = sum z and s2 = sum z z^T of
z = x - shift: on CPU a block-triangular BLAS product; on GPU the H-score statistics
Triton kernel (with a one-class label vector). Both accumulate in float64 with float32
products inside one chunk (CPU) or 32-row slab (Triton) for float32 inputs. The op is
differentiable: d/dx = g1 + z (G2 + G2^T) for upstream gradients g1 of s1 and G2 of s2 (one GEMM).
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


def _fake(x: torch.Tensor, shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    d = x.shape[1]
    return (x.new_empty(d, dtype=torch.float64), x.new_empty(d, d, dtype=torch.float64))


def _one_class(x: torch.Tensor) -> torch.Tensor:
    return torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)


@torch.library.custom_op("pytransfer::lautum_stats_cpu", mutates_args=())
def lautum_stats_cpu(x: torch.Tensor, shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum z, sum z z^T) of z = x - shift (shift rounded to x's dtype), float64. Per chunk of
    ``CHUNK`` rows, z is formed in the input dtype and only the column blocks of z^T z on or
    above the diagonal are BLAS
    products (10/16 of the full product at 4 blocks), added to float64 accumulators. Error for
    float32 inputs: float32 rounding of z plus float32 accumulation over one chunk."""
    B, d = x.shape
    s1 = torch.zeros(d, dtype=torch.float64)
    s2 = torch.zeros(d, d, dtype=torch.float64)
    blocks = [(i, min(i + BLOCK, d)) for i in range(0, d, BLOCK)]
    sh = shift.to(x.dtype)
    for start in range(0, B, CHUNK):
        z = x[start:start + CHUNK] - sh
        s1 += z.sum(0, dtype=torch.float64)
        for i0, i1 in blocks:
            s2[i0:i1, i0:] += (z[:, i0:i1].mT @ z[:, i0:]).double()
    return s1, torch.triu(s2) + torch.triu(s2, 1).mT


@torch.library.custom_op("pytransfer::lautum_stats_triton", mutates_args=())
def lautum_stats_triton(x: torch.Tensor,
                        shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """As ``lautum_stats_cpu``, by the H-score Triton statistics kernel (one launch)."""
    from pytransfer.kernels.hscore import hscore_stats_triton as launch

    d = x.shape[1]
    out = launch(x[None].contiguous(), _one_class(x), shift[None].contiguous(), 1,
                 hscore_ops.default_chunk(1, d))
    return out[0][0].clone(), out[1][0].clone()


def _setup_context(ctx, inputs, output) -> None:
    x, shift = inputs
    ctx.save_for_backward(x, shift)


def _backward(ctx, g1: torch.Tensor, g2: torch.Tensor):
    x, shift = ctx.saved_tensors
    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    z = x.to(dtype) - shift.to(dtype)
    gx = z @ (g2 + g2.mT).to(dtype) + g1.to(dtype)
    return gx.to(x.dtype), None


for _op in (lautum_stats_cpu, lautum_stats_triton):
    _op.register_fake(_fake)
    _op.register_autograd(_backward, setup_context=_setup_context)


def stats_reference(x: torch.Tensor, shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The specification: float64 sums of z = x - shift, differentiable by autograd."""
    z = x.double() - shift
    return z.sum(0), z.mT @ z


_dispatch.register_backends(OP_STATS, reference=stats_reference, cpu=lautum_stats_cpu,
                            triton=lautum_stats_triton, cpu_unavailable=lambda: None)

"""torch.library registrations of the H-score kernels and their backends.

``pytransfer::hscore_stats_{cpu,triton}``: shifted sufficient statistics of T feature sets in
one pass over the data (z = f - shift): sum z, sum z z^T, per-class sums, sum ||z||^2 z and
sum ||z||^4 (the last two for the Ledoit-Wolf intensity), all float64.
``pytransfer::hscore_segment_sq_{cpu,triton}``: per-pixel class sums of whitened features,
returned as squared norms ||S_pc||^2 and counts n_pc, both (P, C) float64.
Neither op is differentiable (the statistics are the input of a closed-form score).
"""

from __future__ import annotations

import torch

from pytransfer import _dispatch
from pytransfer.hscore.reference import segment_sq_reference, stats_reference

OP_STATS = "hscore_stats"
OP_SEGMENT = "hscore_segment_sq"
#: GEMM column block of the CPU statistics kernel: only blocks on or above the diagonal are
#: multiplied (a block-triangular SYRK), 10/16 of the full product at d = 4 blocks.
CPU_BLOCK = 512
#: pixels per block handed to the numba segment-sum kernel (bounds the (N, block) label copy)
PIXEL_BLOCK = 256


def default_chunk(T: int, d: int) -> int:
    """Rows per chunk: about 2M float64 entries of z per chunk (16 MB)."""
    return max(64, (1 << 21) // max(1, T * d))


def _stats_fake(features, labels, shift, num_classes, chunk_size):
    T, _, d = features.shape
    f64 = {"dtype": torch.float64, "device": features.device}
    return (torch.empty(T, d, **f64), torch.empty(T, d, d, **f64),
            torch.empty(T, num_classes, d, **f64), torch.empty(T, d, **f64), torch.empty(T, **f64))


@torch.library.custom_op("pytransfer::hscore_stats_cpu", mutates_args=())
def hscore_stats_cpu(
    features: torch.Tensor, labels: torch.Tensor, shift: torch.Tensor, num_classes: int,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One pass over row chunks. Per chunk, z is formed in float64 (f - shift) and its Gram
    matrix is a BLAS product in the input dtype (float32 GEMM for float32 features) over the
    blocks on or above the diagonal, added to a float64 accumulator; class sums by
    ``index_add_`` (no one-hot). Error: float32 rounding of the shifted z (relative 6e-8) plus
    float32 accumulation over at most ``chunk_size`` rows inside one GEMM."""
    _, N, d = features.shape
    s1, s2, cs, q3, q4 = (x.zero_() for x in _stats_fake(features, labels, shift,
                                                         num_classes, chunk_size))
    gemm = torch.float64 if features.dtype == torch.float64 else torch.float32
    blocks = [(i, min(i + CPU_BLOCK, d)) for i in range(0, d, CPU_BLOCK)]
    for start in range(0, N, chunk_size):
        z = features[:, start:start + chunk_size].double() - shift[:, None, :]
        r = z.square().sum(-1)
        s1 += z.sum(1)
        q4 += r.square().sum(1)
        q3 += torch.bmm(r[:, None, :], z)[:, 0]
        cs.index_add_(1, labels[start:start + chunk_size], z)
        zg = z.to(gemm)
        for bi, (i0, i1) in enumerate(blocks):
            for j0, j1 in blocks[bi:]:
                s2[:, i0:i1, j0:j1] += torch.bmm(zg[:, :, i0:i1].mT, zg[:, :, j0:j1])
    s2 = torch.triu(s2) + torch.triu(s2, 1).mT  # blocks below the diagonal were skipped
    return s1, s2, cs, q3, q4


@torch.library.custom_op("pytransfer::hscore_stats_triton", mutates_args=())
def hscore_stats_triton(
    features: torch.Tensor, labels: torch.Tensor, shift: torch.Tensor, num_classes: int,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from pytransfer.kernels.hscore import hscore_stats_triton as launch

    return launch(features.contiguous(), labels.contiguous(), shift.contiguous(), num_classes,
                  chunk_size)


for _op in (hscore_stats_cpu, hscore_stats_triton):
    _op.register_fake(_stats_fake)


def _stats_reference(features, labels, shift, num_classes, chunk_size):
    return stats_reference(features, labels, shift, num_classes)


_dispatch.register_backends(OP_STATS, reference=_stats_reference, cpu=hscore_stats_cpu,
                            triton=hscore_stats_triton, cpu_unavailable=lambda: None)


def _numba_unavailable() -> str | None:
    try:
        import numba  # noqa: F401
    except ImportError as exc:
        return f"numba is not installed ({exc})"
    return None


def _segment_fake(g, label_maps, num_classes):
    P = label_maps.shape[1]
    return (g.new_empty((P, num_classes), dtype=torch.float64),
            g.new_empty((P, num_classes), dtype=torch.float64))


@torch.library.custom_op("pytransfer::hscore_segment_sq_cpu", mutates_args=())
def hscore_segment_sq_cpu(
    g: torch.Tensor, label_maps: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Numba ``prange`` over pixel groups; labels copied one pixel block at a time."""
    from pytransfer.hscore._numba import segment_sq

    gn = g.double().contiguous().numpy()
    P = label_maps.shape[1]
    sq = torch.zeros(P, num_classes, dtype=torch.float64)
    counts = torch.zeros(P, num_classes, dtype=torch.float64)
    for p0 in range(0, P, PIXEL_BLOCK):
        p1 = min(P, p0 + PIXEL_BLOCK)
        block = label_maps[:, p0:p1].to(torch.int64).contiguous().numpy()
        segment_sq(gn, block, num_classes, sq[p0:p1].numpy(), counts[p0:p1].numpy())
    return sq, counts


@torch.library.custom_op("pytransfer::hscore_segment_sq_triton", mutates_args=())
def hscore_segment_sq_triton(
    g: torch.Tensor, label_maps: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    from pytransfer.kernels.hscore import segment_sq_triton as launch

    return launch(g.contiguous(), label_maps.contiguous(), num_classes)


for _op in (hscore_segment_sq_cpu, hscore_segment_sq_triton):
    _op.register_fake(_segment_fake)


_dispatch.register_backends(
    OP_SEGMENT,
    reference=lambda g, label_maps, num_classes: tuple(
        x.double() for x in segment_sq_reference(g.double(), label_maps, num_classes)),
    cpu=hscore_segment_sq_cpu, triton=hscore_segment_sq_triton,
    cpu_unavailable=_numba_unavailable)

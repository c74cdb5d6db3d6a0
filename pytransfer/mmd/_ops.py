"""torch.library registrations of the MK-MMD kernels and their backends.

Backend kernels (no autograd of their own):
``pytransfer::mmd_linear_fwd_{cpu,triton}`` -> (h (U,) per-kernel estimates, coef (P, 4)
per-tuple derivative coefficients); ``pytransfer::mmd_linear_bwd_{cpu,triton}`` -> gradients
of the four rows of every tuple from coef (never U * n * d intermediates);
``pytransfer::mmd_quadratic_{fwd,bwd}_{cpu,triton}``: the U-statistic by row tiles (BLAS/cuBLAS
Gram block + a fused element-wise pass), never the (N, N, U) kernel tensor.
The estimators ``pytransfer::mmd_linear`` and ``pytransfer::mmd_quadratic`` own the gradient
rule (``register_autograd``) and call the backend named by their ``backend`` argument.
The bandwidths (gammas) are constants for the gradient (detached, as in DAN).
"""

from __future__ import annotations

import torch

from pytransfer import _dispatch, _ext
from pytransfer.mmd.reference import mmd_linear_reference, mmd_quadratic_reference

OP_LINEAR = "mmd_linear"
OP_QUADRATIC = "mmd_quadratic"
#: elements of one Gram tile (rows * N) in the quadratic estimator: 4M (16 MB in float32)
TILE_ELEMENTS = 1 << 22


def _rows_per_tile(N: int) -> int:
    return max(1, min(N, TILE_ELEMENTS // N))


# ------------------------------------------------------------------ linear, CPU (C++)
def linear_fwd_sums(xs, xt, gammas, weights, square):
    """(sum over tuples of each kernel's h term (U,) float64, coef (P, 4)): the C++ forward,
    as a plain function (``MKMMDLoss``'s eager path calls it without the custom op)."""
    (n, d), U = xs.shape, gammas.shape[0]
    P = n // 2
    h, coef = _ext.zeros(torch.float64, U), _ext.out(xs.dtype, P, 4)  # h: accumulated into
    _ext.call("mmd_linear_fwd", xs.dtype, _ext.src(xs, n, d), _ext.src(xt, n, d), P, d,
              _ext.src(gammas, U), _ext.src(weights, U), _ext.src(square, U, dtype=torch.int32),
              U, h, coef)
    return h.tensor, coef.tensor


def linear_bwd(xs, xt, coef, scale: float):
    """(d/dxs, d/dxt) of ``scale`` times the tuple sum from ``coef``: the C++ backward as a
    plain function."""
    (n, d), P = xs.shape, coef.shape[0]
    gxs, gxt = _ext.out(xs.dtype, n, d), _ext.out(xs.dtype, n, d)
    _ext.call("mmd_linear_bwd", xs.dtype, _ext.src(xs, n, d), _ext.src(xt, n, d),
              _ext.src(coef, P, 4), P, d, scale, gxs, gxt)
    return gxs.tensor, gxt.tensor


@torch.library.custom_op("pytransfer::mmd_linear_fwd_cpu", mutates_args=())
def mmd_linear_fwd_cpu(
    xs: torch.Tensor, xt: torch.Tensor, gammas: torch.Tensor, weights: torch.Tensor,
    square: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    h, coef = linear_fwd_sums(xs, xt, gammas, weights, square)
    return (h / coef.shape[0]).to(xs.dtype), coef


@torch.library.custom_op("pytransfer::mmd_linear_bwd_cpu", mutates_args=())
def mmd_linear_bwd_cpu(
    xs: torch.Tensor, xt: torch.Tensor, coef: torch.Tensor, grad: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    return linear_bwd(xs, xt, coef, 2.0 * float(grad) / coef.shape[0])


# ------------------------------------------------------------------ linear, Triton
@torch.library.custom_op("pytransfer::mmd_linear_fwd_triton", mutates_args=())
def mmd_linear_fwd_triton(
    xs: torch.Tensor, xt: torch.Tensor, gammas: torch.Tensor, weights: torch.Tensor,
    square: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    from pytransfer.kernels.mmd import linear_fwd

    return linear_fwd(xs.contiguous(), xt.contiguous(), gammas.contiguous(),
                      weights.contiguous(), square.contiguous())


@torch.library.custom_op("pytransfer::mmd_linear_bwd_triton", mutates_args=())
def mmd_linear_bwd_triton(
    xs: torch.Tensor, xt: torch.Tensor, coef: torch.Tensor, grad: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    from pytransfer.kernels.mmd import linear_bwd

    return linear_bwd(xs.contiguous(), xt.contiguous(), coef.contiguous(), grad)


def _linear_fwd_fake(xs, xt, gammas, weights, square):
    return xs.new_empty((gammas.shape[0],)), xs.new_empty((xs.shape[0] // 2, 4))


def _linear_bwd_fake(xs, xt, coef, grad):
    return torch.empty_like(xs), torch.empty_like(xt)


for _op in (mmd_linear_fwd_cpu, mmd_linear_fwd_triton):
    _op.register_fake(_linear_fwd_fake)
for _op in (mmd_linear_bwd_cpu, mmd_linear_bwd_triton):
    _op.register_fake(_linear_bwd_fake)

_LINEAR = {"cpu": (mmd_linear_fwd_cpu, mmd_linear_bwd_cpu),
           "triton": (mmd_linear_fwd_triton, mmd_linear_bwd_triton)}


@torch.library.custom_op("pytransfer::mmd_linear", mutates_args=())
def mmd_linear(
    xs: torch.Tensor, xt: torch.Tensor, gammas: torch.Tensor, weights: torch.Tensor,
    square: torch.Tensor, backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Linear-time estimate d^2 = sum_u w_u h_u over the first 2P rows of xs, xt (P = n // 2):
    (d^2, h (U,), coef (P, 4)); h and coef carry no gradient (coef is saved for backward)."""
    h, coef = _LINEAR[backend][0](xs, xt, gammas, weights, square)
    return (weights * h).sum(), h, coef


@mmd_linear.register_fake
def _(xs, xt, gammas, weights, square, backend):
    return xs.new_empty(()), xs.new_empty((gammas.shape[0],)), xs.new_empty((xs.shape[0] // 2, 4))


def _linear_setup(ctx, inputs, output):
    xs, xt, _, _, _, backend = inputs
    ctx.mark_non_differentiable(output[1], output[2])
    ctx.save_for_backward(xs, xt, output[1], output[2])
    ctx.backend = backend


def _linear_backward(ctx, grad, _grad_h, _grad_coef):
    xs, xt, h, coef = ctx.saved_tensors
    gxs = gxt = None
    if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
        gxs, gxt = _LINEAR[ctx.backend][1](xs, xt, coef, grad)
    gw = grad * h if ctx.needs_input_grad[3] else None
    return gxs, gxt, None, gw, None, None


mmd_linear.register_autograd(_linear_backward, setup_context=_linear_setup)


# ------------------------------------------------------------------ quadratic, tiled
def _pair_weights(n: int, m: int) -> tuple[float, float, float]:
    """W_ij of the U-statistic sum_{i != j} W_ij k(x_i, x_j) over the pooled rows."""
    return 1.0 / (n * (n - 1)), 1.0 / (m * (m - 1)), -1.0 / (n * m)


def _tiles(xs: torch.Tensor, xt: torch.Tensor):
    X = torch.cat([xs, xt]).contiguous()
    norms = X.square().sum(-1)
    R = _rows_per_tile(X.shape[0])
    for r0 in range(0, X.shape[0], R):
        yield r0, X, norms, X[r0:r0 + R] @ X.T  # (rows, N) Gram block


def _tile_cpu(G, rn, cn, r0, ns, gammas, weights, square, W, backward, h):
    (R, N), U = G.shape, gammas.shape[0]
    _ext.call("mmd_tile", G.dtype, _ext.dst(G, R, N), _ext.src(rn, R), _ext.src(cn, N), R, N,
              r0, ns, _ext.src(gammas, U), _ext.src(weights, U),
              _ext.src(square, U, dtype=torch.int32), U, *W, backward,
              _ext.dst(h, U, dtype=torch.float64))


def _tile_triton(G, rn, cn, r0, ns, gammas, weights, square, W, backward, h):
    from pytransfer.kernels.mmd import quadratic_tile

    quadratic_tile(G, rn.contiguous(), cn, r0, ns, gammas, weights, square, W, backward, h)


_TILE = {"cpu": _tile_cpu, "triton": _tile_triton}


def _quadratic_fwd(xs, xt, gammas, weights, square, tile):
    gammas, weights, square = gammas.contiguous(), weights.contiguous(), square.contiguous()
    W = _pair_weights(xs.shape[0], xt.shape[0])
    h = torch.zeros(gammas.shape[0], dtype=torch.float64, device=xs.device)
    for r0, _X, norms, G in _tiles(xs, xt):
        tile(G, norms[r0:r0 + G.shape[0]], norms, r0, xs.shape[0], gammas, weights, square, W,
             False, h)
    return h.to(xs.dtype)


def _quadratic_bwd(xs, xt, gammas, weights, square, grad, tile):
    """dL/dx_i = 4 sum_j C_ij (x_i - x_j), C_ij = W_ij phi'(D_ij): per tile, two GEMM-sized
    products from the recomputed coefficient block."""
    gammas, weights, square = gammas.contiguous(), weights.contiguous(), square.contiguous()
    W = _pair_weights(xs.shape[0], xt.shape[0])
    dummy = torch.zeros(gammas.shape[0], dtype=torch.float64, device=xs.device)
    gX = []
    for r0, X, norms, C in _tiles(xs, xt):
        rows = X[r0:r0 + C.shape[0]]
        tile(C, norms[r0:r0 + C.shape[0]], norms, r0, xs.shape[0], gammas, weights, square, W,
             True, dummy)
        gX.append(4 * (C.sum(1, keepdim=True) * rows - C @ X))
    gX = torch.cat(gX) * grad
    return gX[:xs.shape[0]].clone(), gX[xs.shape[0]:].clone()  # outputs must not alias


@torch.library.custom_op("pytransfer::mmd_quadratic_fwd_cpu", mutates_args=())
def mmd_quadratic_fwd_cpu(
    xs: torch.Tensor, xt: torch.Tensor, gammas: torch.Tensor, weights: torch.Tensor,
    square: torch.Tensor,
) -> torch.Tensor:
    return _quadratic_fwd(xs, xt, gammas, weights, square, _tile_cpu)


@torch.library.custom_op("pytransfer::mmd_quadratic_fwd_triton", mutates_args=())
def mmd_quadratic_fwd_triton(
    xs: torch.Tensor, xt: torch.Tensor, gammas: torch.Tensor, weights: torch.Tensor,
    square: torch.Tensor,
) -> torch.Tensor:
    return _quadratic_fwd(xs, xt, gammas, weights, square, _tile_triton)


@torch.library.custom_op("pytransfer::mmd_quadratic_bwd_cpu", mutates_args=())
def mmd_quadratic_bwd_cpu(
    xs: torch.Tensor, xt: torch.Tensor, gammas: torch.Tensor, weights: torch.Tensor,
    square: torch.Tensor, grad: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _quadratic_bwd(xs, xt, gammas, weights, square, grad, _tile_cpu)


@torch.library.custom_op("pytransfer::mmd_quadratic_bwd_triton", mutates_args=())
def mmd_quadratic_bwd_triton(
    xs: torch.Tensor, xt: torch.Tensor, gammas: torch.Tensor, weights: torch.Tensor,
    square: torch.Tensor, grad: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _quadratic_bwd(xs, xt, gammas, weights, square, grad, _tile_triton)


def _quadratic_fwd_fake(xs, xt, gammas, weights, square):
    return xs.new_empty((gammas.shape[0],))


def _quadratic_bwd_fake(xs, xt, gammas, weights, square, grad):
    return torch.empty_like(xs), torch.empty_like(xt)


for _op in (mmd_quadratic_fwd_cpu, mmd_quadratic_fwd_triton):
    _op.register_fake(_quadratic_fwd_fake)
for _op in (mmd_quadratic_bwd_cpu, mmd_quadratic_bwd_triton):
    _op.register_fake(_quadratic_bwd_fake)

_QUADRATIC = {"cpu": (mmd_quadratic_fwd_cpu, mmd_quadratic_bwd_cpu),
              "triton": (mmd_quadratic_fwd_triton, mmd_quadratic_bwd_triton)}


@torch.library.custom_op("pytransfer::mmd_quadratic", mutates_args=())
def mmd_quadratic(
    xs: torch.Tensor, xt: torch.Tensor, gammas: torch.Tensor, weights: torch.Tensor,
    square: torch.Tensor, backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unbiased U-statistic d^2 = sum_u w_u h_u: (d^2, h (U,)); h carries no gradient."""
    h = _QUADRATIC[backend][0](xs, xt, gammas, weights, square)
    return (weights * h).sum(), h


@mmd_quadratic.register_fake
def _(xs, xt, gammas, weights, square, backend):
    return xs.new_empty(()), xs.new_empty((gammas.shape[0],))


def _quadratic_setup(ctx, inputs, output):
    xs, xt, gammas, weights, square, backend = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(xs, xt, gammas, weights, square, output[1])
    ctx.backend = backend


def _quadratic_backward(ctx, grad, _grad_h):
    xs, xt, gammas, weights, square, h = ctx.saved_tensors
    gxs = gxt = None
    if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
        gxs, gxt = _QUADRATIC[ctx.backend][1](xs, xt, gammas, weights, square, grad)
    gw = grad * h if ctx.needs_input_grad[3] else None
    return gxs, gxt, None, gw, None, None


mmd_quadratic.register_autograd(_quadratic_backward, setup_context=_quadratic_setup)


# ------------------------------------------------------------------ dispatch
def _compiled(op, backend):
    def run(xs, xt, gammas, weights, square):
        return op(xs, xt, gammas, weights, square, backend)[:2]
    return run


def _reference(fn):
    def run(xs, xt, gammas, weights, square):
        return fn(xs, xt, gammas, weights)
    return run


for _name, _op, _ref in ((OP_LINEAR, mmd_linear, mmd_linear_reference),
                         (OP_QUADRATIC, mmd_quadratic, mmd_quadratic_reference)):
    _dispatch.register_backends(_name, reference=_reference(_ref), cpu=_compiled(_op, "cpu"),
                                triton=_compiled(_op, "triton"))

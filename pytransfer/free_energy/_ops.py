"""torch.library registrations of the Gibbs kernels and their backends.

For each compiled backend ``b`` in (cpu, triton): ``pytransfer::gibbs_weights_b`` and
``pytransfer::gibbs_moments_b`` own the gradient rule (``register_autograd``), computed by the
backward kernels ``pytransfer::gibbs_weights_backward_b`` / ``gibbs_moments_backward_b``
(first order). The reference backend is the plain-torch spec, differentiable to any order.
"""

from __future__ import annotations

import torch

from pytransfer import _dispatch, _ext
from pytransfer.free_energy.reference import gibbs_moments_reference, gibbs_weights_reference

WEIGHTS_OP, MOMENTS_OP = "gibbs_weights", "gibbs_moments"
TRITON_MAX_TILE = 1 << 16  # padded S * K * K held by one Triton program


def _cpu_weights_fwd(h, q):
    X, S = h.shape
    out = h.new_empty((X, S))
    _ext.call("gibbs_weights_fwd", h.dtype, _ext.src(h, X, S), _ext.src(q, X, S), X, S,
              _ext.dst(out, X, S))
    return out


def _cpu_weights_bwd(g, lw):
    X, S = g.shape
    out = g.new_empty((X, S))
    _ext.call("gibbs_weights_bwd", g.dtype, _ext.src(g, X, S), _ext.src(lw, X, S), X, S,
              _ext.dst(out, X, S))
    return out


def _cpu_moments_fwd(w, f):
    X, S, K = f.shape
    means, cov = f.new_empty((X, K)), f.new_empty((X, K, K))
    _ext.call("gibbs_moments_fwd", f.dtype, _ext.src(w, X, S), _ext.src(f, X, S, K), X, S, K,
              _ext.dst(means, X, K), _ext.dst(cov, X, K, K))
    return means, cov


def _cpu_moments_bwd(w, f, m, gm, gc):
    X, S, K = f.shape
    gw, gf = w.new_empty((X, S)), f.new_empty((X, S, K))
    _ext.call("gibbs_moments_bwd", f.dtype, _ext.src(w, X, S), _ext.src(f, X, S, K),
              _ext.src(m, X, K), _ext.src(gm, X, K), _ext.src(gc, X, K, K), X, S, K,
              _ext.dst(gw, X, S), _ext.dst(gf, X, S, K))
    return gw, gf


def _triton(name):
    def launch(*args):
        from pytransfer.kernels import gibbs

        return getattr(gibbs, name)(*args)
    return launch


KERNELS = {
    "cpu": (_cpu_weights_fwd, _cpu_weights_bwd, _cpu_moments_fwd, _cpu_moments_bwd),
    "triton": tuple(_triton(n) for n in ("gibbs_weights_fwd", "gibbs_weights_bwd",
                                         "gibbs_moments_fwd", "gibbs_moments_bwd")),
}


def _define(backend: str) -> dict[str, object]:
    """The four custom ops of one compiled backend, with fakes and autograd."""
    w_fwd, w_bwd, m_fwd, m_bwd = KERNELS[backend]

    @torch.library.custom_op(f"pytransfer::gibbs_weights_backward_{backend}", mutates_args=())
    def weights_backward(grad: torch.Tensor, log_w: torch.Tensor) -> torch.Tensor:
        return w_bwd(grad.contiguous(), log_w.contiguous())

    @torch.library.custom_op(f"pytransfer::gibbs_weights_{backend}", mutates_args=())
    def weights(neg_log_joint: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
        return w_fwd(neg_log_joint.contiguous(), log_q.contiguous())

    @torch.library.custom_op(f"pytransfer::gibbs_moments_backward_{backend}", mutates_args=())
    def moments_backward(
        weights: torch.Tensor, fields: torch.Tensor, means: torch.Tensor,
        grad_means: torch.Tensor, grad_cov: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return m_bwd(*(t.contiguous() for t in (weights, fields, means, grad_means, grad_cov)))

    @torch.library.custom_op(f"pytransfer::gibbs_moments_{backend}", mutates_args=())
    def moments(weights: torch.Tensor, fields: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return m_fwd(weights.contiguous(), fields.contiguous())

    weights_backward.register_fake(lambda grad, log_w: torch.empty_like(grad))
    weights.register_fake(lambda h, q: torch.empty_like(h))
    moments_backward.register_fake(
        lambda w, f, m, gm, gc: (torch.empty_like(w), torch.empty_like(f)))
    moments.register_fake(
        lambda w, f: (f.new_empty((f.shape[0], f.shape[2])),
                      f.new_empty((f.shape[0], f.shape[2], f.shape[2]))))

    def w_setup(ctx, inputs, output):
        ctx.save_for_backward(output)

    def w_backward(ctx, grad):
        g = weights_backward(grad, ctx.saved_tensors[0])
        return g, g

    def m_setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], inputs[1], output[0])

    def m_backward(ctx, grad_means, grad_cov):
        w, f, m = ctx.saved_tensors
        return moments_backward(w, f, m, grad_means.contiguous(), grad_cov.contiguous())

    weights.register_autograd(w_backward, setup_context=w_setup)
    moments.register_autograd(m_backward, setup_context=m_setup)
    return {"weights": weights, "weights_backward": weights_backward, "moments": moments,
            "moments_backward": moments_backward}


OPS = {backend: _define(backend) for backend in KERNELS}


def _triton_supports(*, S: int, K: int = 1, **_) -> str | None:
    bs, bk = 1 << max(S - 1, 1).bit_length(), 1 << max(K - 1, 1).bit_length()
    if bs * bk * bk > TRITON_MAX_TILE:
        return f"S={S}, K={K} padded exceeds one program's tile ({TRITON_MAX_TILE})"
    return None


_dispatch.register(WEIGHTS_OP, "reference", device_types=("cpu", "cuda"))(gibbs_weights_reference)
_dispatch.register(MOMENTS_OP, "reference", device_types=("cpu", "cuda"))(gibbs_moments_reference)


def _cpu_supports(*, dtype: torch.dtype, **_) -> str | None:
    if dtype not in (torch.float32, torch.float64):
        return f"the C++ kernels take float32/float64, not {dtype}"
    return None


for _op, _key in ((WEIGHTS_OP, "weights"), (MOMENTS_OP, "moments")):
    _dispatch.register(_op, "cpu", device_types=("cpu",), unavailable=_ext.unavailable,
                       supports=_cpu_supports)(OPS["cpu"][_key])
    _dispatch.register(_op, "triton", device_types=("cuda",), unavailable=_ext.triton_unavailable,
                       supports=_triton_supports)(OPS["triton"][_key])

"""``LautumLoss``: minus the Lautum information between fixed random projections of the
target inputs and of the network's features (the Lautum regularisation paper, eq. 2)."""

from __future__ import annotations

import functools

import torch

from pytransfer import _checks
from pytransfer.lautum import LautumEstimator, gaussian_lautum
from pytransfer.lautum.gaussian import check_views, lautum_factored, lautum_factored_grad

#: default cap on the projection dimensions p and q (further capped at batch // 8)
DEFAULT_DIM = 8
#: the few-op path (:class:`_ScaledLautum`) for p + q up to this (a float64 covariance)
FEW_OP_DIM = 64


def _project(x: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
    """x @ proj, computed as (proj^T x^T)^T (a transposed view): with p, q <= 8 output
    columns, torch's CPU product (MKL) is 3-4x slower the direct way round on the AMD Zen 4
    this was measured on (B = 512, 784 -> 8: 460 vs 110 us), and so is its backward."""
    return (proj.mT @ x.mT).mT


def _projection(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(rows, cols, generator=gen, dtype=torch.float64) / rows ** 0.5


class _ScaledLautum(torch.autograd.Function):
    """-L of views u (B, p), v (B, q) scaled to unit mean column variance (constants, as
    :meth:`LautumLoss._scale`), ``ridge`` on the scaled covariance, in few ops: one float64
    covariance S of [u | v], scaled by D = diag(1/scale) instead of the views; the value from
    two Cholesky factors (``lautum_factored``: ``lautum_from_covariance``'s value and checks),
    the gradient in closed form, dL/dz = 2/n z_c D G D with G = ``lautum_factored_grad``
    (differentiable once)."""

    @staticmethod
    def forward(ctx, u, v, ridge):
        (n, p), q = u.shape, v.shape[1]
        z = torch.cat([u, v], 1).double()
        zc = z - z.mean(0)
        cov = zc.mT @ zc / n
        var = torch.diagonal(cov)
        tiny = torch.finfo(torch.float64).tiny
        d = torch.cat([var[:p].mean().clamp_min(tiny).rsqrt().expand(p),
                       var[p:].mean().clamp_min(tiny).rsqrt().expand(q)])
        cov = (cov * (d[:, None] * d[None, :])).diagonal_scatter(var * d.square() + ridge)
        value, factors = lautum_factored(cov, p)
        ctx.save_for_backward(zc, cov, d, *factors)
        ctx.p, ctx.dtypes = p, (u.dtype, v.dtype)
        half = u.dtype in (torch.float16, torch.bfloat16)  # float32, as ``gaussian_lautum``
        return (-value).to(torch.float32 if half else u.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        zc, cov, d, *factors = ctx.saved_tensors
        g = lautum_factored_grad(cov, ctx.p, factors) * (d[:, None] * d[None, :])
        gz = zc @ g * (-2 / zc.shape[0] * grad.double())
        need_u, need_v = ctx.needs_input_grad[:2]
        return (gz[:, :ctx.p].to(ctx.dtypes[0]) if need_u else None,
                gz[:, ctx.p:].to(ctx.dtypes[1]) if need_v else None, None)


class LautumLoss(torch.nn.Module):
    """``forward(x_target (B, ...), features (B, feature_dim))`` -> -L(U; V) (scalar).

    U = flatten(x_target) @ P_u and V = features @ P_v with fixed Gaussian projections
    P_u (in_features, p), P_v (feature_dim, q) drawn from ``seed`` (buffers: saved with the
    model, moved with ``.to``). The paper's eq. 2 *maximises* L(w; x_t) on unlabelled target
    batches, so this loss returns -L; a method adds lambda * loss to the source cross-entropy.

    ``p``, ``q`` = None: min(8, in_features, B // 8) and min(8, feature_dim, B // 8) at each
    call (the first columns of fixed 8-column projections), so that p + q <= B / 4: sample
    canonical correlations are biased upwards unless p + q is small against B. Measured on
    independent Gaussian views (true L = 0), mean of 20 batches of ``gaussian_lautum``:

    ======  =======  =======  =======  =======  ========
    p = q   B = 64   B = 128  B = 256  B = 512  B = 2048
    ======  =======  =======  =======  =======  ========
    4       0.155    0.067    0.037    0.016    0.004
    8       0.796    0.292    0.149    0.069    0.016
    16      5.744    1.572    0.615    0.269    0.067
    32      -        11.059   3.065    1.243    0.257
    ======  =======  =======  =======  =======  ========

    i.e. about p q / (2 B) while p + q <= B / 4 and much more beyond (one true correlation
    rho = 0.5 is worth L = 0.19): compare values only at one (p, q, B).

    ``ridge`` (default 1e-4; in [0, 0.6]) is the clamp of rho^2 made smooth: each view is
    scaled to unit mean variance by a constant (L is scale-invariant) and ``gaussian_lautum``
    adds ridge * max(p, q) * I to both view covariances, which bounds every canonical
    correlation by rho^2 <= (1 + ridge)^-2 <= 1 - ridge; L stays finite (<= about
    min(p, q) / ridge) when the features become a function of the inputs. ``estimator``: any
    ``(u, v) -> scalar`` (``LautumEstimator``) to replace the Gaussian one; ``ridge`` then
    is not applied. ``distributed=True``: the statistics (and the view scales) are those of
    the global batch under torch.distributed.

    The common call (CPU, not distributed, backend "auto", p + q <= ``FEW_OP_DIM``) takes a
    few-op path with the same value, checks and gradient (:class:`_ScaledLautum`: one float64
    covariance, scaled in place of the views, two Cholesky factors, the gradient in closed
    form, differentiable once); any other, the scaled views through ``gaussian_lautum``.
    """

    def __init__(self, in_features: int, feature_dim: int, p: int | None = None,
                 q: int | None = None, ridge: float = 1e-4, seed: int = 0,
                 estimator: LautumEstimator | None = None, distributed: bool = False,
                 group=None, backend: str = "auto", check_inputs: bool = True) -> None:
        super().__init__()
        self.in_features = _checks.positive_int("in_features", in_features)
        self.feature_dim = _checks.positive_int("feature_dim", feature_dim)
        for name, dim, cap in (("p", p, in_features), ("q", q, feature_dim)):
            if dim is not None and _checks.positive_int(name, dim) > cap:
                raise ValueError(f"{name}={dim} exceeds the dimension it projects ({cap}): "
                                 f"the projected view would be singular")
        self.ridge = _checks.nonneg_float("ridge", ridge)
        if self.ridge > 0.6:
            raise ValueError(f"ridge must be in [0, 0.6] (a bound 1 - ridge on rho^2), got "
                             f"{ridge}")
        if estimator is not None and not callable(estimator):
            raise TypeError(f"estimator must be callable (u, v) -> scalar, got "
                            f"{type(estimator).__name__}")
        self.p, self.q, self.seed = p, q, seed
        self.estimator, self.distributed, self.group = estimator, distributed, group
        self.backend, self.check_inputs = backend, check_inputs
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("proj_u", _projection(in_features, p or min(DEFAULT_DIM,
                                                                         in_features), gen))
        self.register_buffer("proj_v", _projection(feature_dim, q or min(DEFAULT_DIM,
                                                                         feature_dim), gen))

    def dims(self, batch: int) -> tuple[int, int]:
        """(p, q) used for a batch of ``batch`` rows."""
        cap = max(1, batch // 8)
        return (self.p or min(self.proj_u.shape[1], cap), self.q or min(self.proj_v.shape[1],
                                                                         cap))

    def views(self, x_target: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The projected views (U, V) of a batch, in the features' dtype."""
        _checks.floating("x_target", x_target)
        _checks.floating("features", features)
        _checks.ndim("features", features, (2,))
        if x_target.dim() < 1 or x_target.shape[0] != features.shape[0]:
            raise ValueError(f"x_target has {tuple(x_target.shape)[:1]} rows but features have "
                             f"{features.shape[0]}")
        x = x_target.reshape(x_target.shape[0], -1)
        if x.shape[1] != self.in_features:
            raise ValueError(f"x_target flattens to {x.shape[1]} features, the loss was built "
                             f"for in_features={self.in_features}")
        if features.shape[1] != self.feature_dim:
            raise ValueError(f"features have {features.shape[1]} columns, the loss was built "
                             f"for feature_dim={self.feature_dim}")
        p, q = self.dims(features.shape[0])
        dtype = features.dtype
        return (_project(x.to(dtype), self.proj_u[:, :p].to(dtype)),
                _project(features, self.proj_v[:, :q].to(dtype)))

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        """sqrt of the mean column variance of the (global) batch, as a constant."""
        xd = x.detach().double()
        packed = torch.cat([xd.new_tensor([float(x.shape[0])]), xd.square().sum()[None],
                            xd.sum(0)])
        if self.distributed:
            import torch.distributed as dist

            dist.all_reduce(packed, group=self.group)
        n, mean = packed[0], packed[2:] / packed[0]
        var = (packed[1] / n - mean.square().sum()) / x.shape[1]
        return var.clamp_min(torch.finfo(torch.float64).tiny).sqrt().to(x.dtype)

    def forward(self, x_target: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        u, v = self.views(x_target, features)
        if self.estimator is not None:
            return -self.estimator(u, v)
        p, q = u.shape[1], v.shape[1]
        if (not self.distributed and self.backend == "auto" and u.is_cpu
                and p + q <= FEW_OP_DIM):
            check_views(u, v, self.check_inputs)
            return _ScaledLautum.apply(u, v, self.ridge * max(p, q))
        estimate = functools.partial(gaussian_lautum, ridge=self.ridge * max(p, q),
                                     distributed=self.distributed, group=self.group,
                                     backend=self.backend, check_inputs=self.check_inputs)
        return -estimate(u / self._scale(u), v / self._scale(v))

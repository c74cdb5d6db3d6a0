"""The exact Hessian operator of the free energy and the vectors of Lemma 5, eq. 21, 25, 27.

With S samples z_s ~ e(z|x) and log e(z_s|x) held fixed, the Monte-Carlo free energy
    J(theta) = -E_x log sum_s exp(-H_s - log e_s)        (eq. 14, up to the constant log S)
has gradient E_x <grad H> and Hessian exactly A = E_x[<grad^2 H> - Cov_w(grad H)] (Lemma 5),
the expectations <.> taken with the self-normalised weights w = softmax(-H - log e). So A.v
is one double-backward through the graph of grad J, built once per batch and reused by every
product of a solve: no per-sample gradients, memory O(P + activations). With
``weights="uniform"`` (Remark 6) log e is replaced by -H at the current theta (detached): the
weights are uniform there and A, b are Lemma 5's with the encoder standing in for the Gibbs
measure.

Vectors are flat, in the order of ``parameters_to_vector(model.parameters())``; entries of
parameters that do not reach H (the encoder, the proposal) or do not require grad are zero.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from pytransfer import _checks
from pytransfer.free_energy.gibbs import gibbs_moments, gibbs_weights

WEIGHTS = ("importance", "uniform")
METHODS = ("minres", "cg")
#: the smallest lambda, gamma a continuation step may reach (eq. 8 needs them > 0)
MULTIPLIER_FLOOR = 1e-6
PROTOCOL = ("encode", "log_prior", "log_decoder", "log_classifier")


@runtime_checkable
class GibbsModel(Protocol):
    """What the operator needs of a model: the proposal and the three terms of H (eq. 11).

    ``encode(x)`` returns a distribution over z with ``rsample`` and ``log_prob``; the others
    take z of shape (S, X, dz) and return (S, X) log-densities.
    """

    def encode(self, x: torch.Tensor) -> torch.distributions.Distribution: ...
    def log_prior(self, z: torch.Tensor) -> torch.Tensor: ...
    def log_decoder(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor: ...
    def log_classifier(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor: ...
    def parameters(self): ...


def check_model(model: object) -> None:
    """TypeError naming the first protocol method ``model`` lacks."""
    for name in (*PROTOCOL, "parameters"):
        if not callable(getattr(model, name, None)):
            raise TypeError(f"model must implement {name}() (the GibbsModel protocol: "
                            f"{', '.join(PROTOCOL)}); {type(model).__name__} has no {name}")


def floor_multiplier(name: str, value: float, floor: float = MULTIPLIER_FLOOR) -> float:
    """max(value, floor) for a Lagrange multiplier after a continuation step, with a
    RuntimeWarning when the floor binds: the process stepped to lambda or gamma <= 0 and is
    no longer on the path it integrates."""
    if not value >= floor:  # NaN included
        warnings.warn(f"{name} = {value:.4g} after the step is below {floor:g}: clamped to "
                      f"{floor:g} (the path left the region lambda, gamma > 0; use a smaller "
                      f"step)", RuntimeWarning, stacklevel=2)
        return floor
    return value


@dataclass
class SolveInfo:
    method: str
    iterations: int
    converged: bool
    residual_norms: list[float] = field(default_factory=list)  # ||b - A x_k||, k = 0..iterations
    negative_curvature: bool = False  # CG met p.Ap <= 0 (A not positive definite)


@dataclass
class Functionals:
    """Rate, distortion, classification loss and free energy (eq. 1, 4, 10) on the batch."""

    R: float
    D: float
    C: float
    F: float


class GibbsOperator:
    """A = grad^2 J and the vectors b_lambda, b_gamma, grad C of one batch at (lambda, gamma).

    Args:
        model: a :class:`GibbsModel` (``pytransfer.free_energy.models``).
        batch: (x, y) with x (X, ...) and y (X,) labels.
        lam, gamma: the Lagrange multipliers of eq. 8 (> 0).
        samples: S, samples of z per datum (>= 2 with importance weights).
        weights: "importance" (self-normalised, exact Gibbs weights) or "uniform" (Remark 6).
        data_weights: optional (X,) weights of the rows in E_x (default: the batch mean), for
            the data mixture p(x, t) of eq. 23.
        backend: backend of ``gibbs_weights`` / ``gibbs_moments``.
    Samples are drawn once (seed the global generator for reproducibility) and held fixed.
    """

    def __init__(self, model: GibbsModel, batch: tuple[torch.Tensor, torch.Tensor], lam: float,
                 gamma: float, *, samples: int = 32, weights: str = "importance",
                 data_weights: torch.Tensor | None = None, backend: str = "auto") -> None:
        check_model(model)
        self.lam = _checks.positive_float("lam", lam)
        self.gamma = _checks.positive_float("gamma", gamma)
        self.samples = _checks.positive_int("samples", samples)
        self.weights = _checks.choice("weights", weights, WEIGHTS)
        if weights == "importance" and samples < 2:
            raise ValueError(f"samples must be >= 2 with importance weights, got {samples}")
        x, y = batch
        _checks.tensor("batch[0] (x)", x)
        _checks.tensor("batch[1] (y)", y)
        if x.shape[0] != y.shape[0] or x.shape[0] < 1:
            raise ValueError(f"batch x and y must hold the same number >= 1 of rows, got "
                             f"{x.shape[0]} and {y.shape[0]}")
        if y.dim() == 1 and y.is_floating_point():
            raise TypeError(f"batch[1] (y) of shape ({y.shape[0]},) must hold integer labels, got "
                            f"{y.dtype}; label distributions are (X, classes)")
        if y.dim() == 1 and bool((y < 0).any()):
            raise ValueError(f"batch[1] (y) holds negative labels (min {int(y.min())})")
        self.model, self.x, self.y, self.backend = model, x, y, backend
        self.params = list(model.parameters())
        self.active = [p.requires_grad for p in self.params]
        ref = self.params[0]
        self.dtype, self.device = ref.dtype, ref.device
        self.numel = sum(p.numel() for p in self.params)
        X = x.shape[0]
        if data_weights is None:
            data_weights = torch.full((X,), 1.0 / X, dtype=self.dtype, device=self.device)
        else:
            _checks.floating("data_weights", _checks.tensor("data_weights", data_weights))
            if data_weights.shape != (X,):
                raise ValueError(f"data_weights must have shape ({X},), got "
                                 f"{tuple(data_weights.shape)}")
            _checks.finite("data_weights", data_weights)
            _checks.nonnegative("data_weights", data_weights)
            if not bool(data_weights.sum() > 0):
                raise ValueError("data_weights must have a positive sum (all rows weigh 0)")
        self.pi = data_weights / data_weights.sum()
        with torch.no_grad():
            q = model.encode(x)
            self.z = q.rsample((samples,))
            self.log_q = q.log_prob(self.z).transpose(0, 1).contiguous()  # (X, S)
        self._terms = self._evaluate(self.lam, self.gamma)
        with torch.no_grad():
            self.log_w = gibbs_weights(self._terms["H"].detach(), self._logq_for(self._terms["H"]),
                                       backend=backend)
            w = self.log_w.exp()
            fields = torch.stack([-self._terms["log_d"], self._terms["log_c"],
                                  self.log_q - self._terms["log_m"]], -1).detach()
            self.means, self.cov = gibbs_moments(w, fields.contiguous(), backend=backend)
        self.w = w
        self._grad: list[tuple[torch.Tensor, tuple[int, int], torch.Size]] | None = None

    # -- evaluation on the held samples -----------------------------------------------------
    def _evaluate(self, lam, gamma, x: torch.Tensor | None = None,
                  y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The terms of H on the held samples; (lam, gamma, x, y) may be tensors in a graph
        (the data path of eq. 23/37 differentiated in t)."""
        m = self.model
        x = self.x if x is None else x
        y = self.y if y is None else y
        log_m = m.log_prior(self.z).transpose(0, 1)
        log_d = m.log_decoder(x, self.z).transpose(0, 1)
        log_c = m.log_classifier(y, self.z).transpose(0, 1)
        for name, t in (("log_prior", log_m), ("log_decoder", log_d), ("log_classifier", log_c)):
            if t.shape != self.log_q.shape:
                raise ValueError(f"model.{name} must return shape (S, X) = "
                                 f"{tuple(self.log_q.T.shape)}, got {tuple(t.T.shape)}")
        H = -log_m - lam * log_d - gamma * log_c
        if not bool(torch.isfinite(H).all()):
            raise ValueError("the Hamiltonian H (eq. 11) is not finite for some sample")
        return {"H": H, "log_m": log_m, "log_d": log_d, "log_c": log_c}

    def _logq_for(self, H: torch.Tensor) -> torch.Tensor:
        return self.log_q if self.weights == "importance" else -H.detach()

    def _J(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = -terms["H"] - self._logq_for(terms["H"])
        return -(self.pi * torch.logsumexp(logits, 1)).sum()

    def _flat(self, grads) -> torch.Tensor:
        parts = [torch.zeros_like(p).reshape(-1) if g is None else g.reshape(-1)
                 for p, g in zip(self.params, grads, strict=True)]
        return torch.cat(parts)

    def _grad_of(self, scalar: torch.Tensor, **kw) -> torch.Tensor:
        inputs = [p for p, a in zip(self.params, self.active, strict=True) if a]
        got = iter(torch.autograd.grad(scalar, inputs, allow_unused=True, **kw))
        return self._flat([next(got) if a else None for a in self.active])

    def grad_J(self, lam: float | None = None, gamma: float | None = None) -> torch.Tensor:
        """grad J = E_x <grad H> (flat) at (lam, gamma), default the operator's own."""
        lam = self.lam if lam is None else lam
        gamma = self.gamma if gamma is None else gamma
        terms = self._evaluate(lam, gamma)
        return self._grad_of(self._J(terms)).detach()

    # -- A.v ----------------------------------------------------------------------------
    def _check_vector(self, name: str, v: object) -> torch.Tensor:
        _checks.tensor(name, v)
        if v.shape != (self.numel,):
            raise ValueError(f"{name} must be a flat vector of shape ({self.numel},) (the model's "
                             f"parameters), got {tuple(v.shape)}")
        if v.dtype != self.dtype:
            raise TypeError(f"{name} must have the parameters' dtype {self.dtype}, got {v.dtype}")
        if v.device != self.device:
            raise ValueError(f"{name} must be on {self.device}, got {v.device}")
        return v

    def _build_graph(self) -> None:
        """The graph of grad J (create_graph), once per batch: every product reuses it."""
        inputs = [p for p, a in zip(self.params, self.active, strict=True) if a]
        grads = torch.autograd.grad(self._J(self._terms), inputs, create_graph=True,
                                    allow_unused=True)
        offsets = [0]
        for p in self.params:
            offsets.append(offsets[-1] + p.numel())
        span = {id(p): (offsets[i], offsets[i + 1]) for i, p in enumerate(self.params)}
        # (grad of p, slice of v for p): only the grads that depend on theta carry a product
        self._grad = [(g, span[id(p)], p.shape) for p, g in zip(inputs, grads, strict=True)
                      if g is not None and g.requires_grad]
        self._inputs = inputs
        self._spans = [span[id(p)] for p in inputs]

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """A.v = grad^2 J v (Lemma 5) by double-backward through the cached graph of grad J."""
        self._check_vector("v", v)
        if self._grad is None:
            self._build_graph()
        out = torch.zeros_like(v)
        if not self._grad:
            return out
        got = torch.autograd.grad([g for g, _, _ in self._grad],
                                  self._inputs, [v[a:b].view(shape) for _, (a, b), shape
                                                 in self._grad],
                                  retain_graph=True, allow_unused=True)
        for (a, b), g in zip(self._spans, got, strict=True):
            if g is not None:
                out[a:b] = g.reshape(-1)
        return out

    # -- b and C terms (eq. 17, 21) -----------------------------------------------------
    def _cov_grad(self, field: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """grad_theta of E_x[<f> - Cov(f, H)] with the weights' theta-dependence: the vector
        E_x[<grad f> - <(f - <f>) grad H>] (f detached in the covariance coefficient)."""
        t = self._terms
        coeff = (field - mean[:, None]).detach()
        q = (self.pi[:, None] * self.w * (field - coeff * t["H"])).sum()
        return self._grad_of(q, retain_graph=True).detach()

    def b_lambda(self) -> torch.Tensor:
        """b_lambda = -d/dlambda grad J = -E_x[<grad h> - <(h - <h>) grad H>], h = -log d."""
        return -self._cov_grad(-self._terms["log_d"], self.means[:, 0])

    def b_gamma(self) -> torch.Tensor:
        """b_gamma = -d/dgamma grad J, with dH/dgamma = -log c (eq. 17)."""
        return -self._cov_grad(-self._terms["log_c"], -self.means[:, 1])

    def grad_C(self) -> torch.Tensor:
        """grad_theta C at fixed (lambda, gamma): -E_x[<grad l> - <(l - <l>) grad H>], l = log c."""
        return -self._cov_grad(self._terms["log_c"], self.means[:, 1])

    def dC_dlambda(self) -> float:
        """Partial dC/dlambda at fixed theta: E_x Cov(dH/dlambda, l) (eq. 21's first terms)."""
        return float((self.pi * self.cov[:, 0, 1]).sum())

    def dC_dgamma(self) -> float:
        """Partial dC/dgamma at fixed theta: E_x Cov(dH/dgamma, l) = -E_x Var(l)."""
        return float((self.pi * -self.cov[:, 1, 1]).sum())

    def C_lambda(self, theta_lambda: torch.Tensor | None = None, **solve_kw) -> float:
        """C_lambda of eq. 21 = dC/dlambda + grad C . theta_lambda, theta_lambda = A^-1 b_lambda
        (solved with ``solve_kw`` when not given)."""
        if theta_lambda is None:
            theta_lambda = self.solve(self.b_lambda(), **solve_kw)[0]
        return self.dC_dlambda() + float(self.grad_C() @ theta_lambda)

    def C_gamma(self, theta_gamma: torch.Tensor | None = None, **solve_kw) -> float:
        """C_gamma of eq. 21 = dC/dgamma + grad C . theta_gamma, theta_gamma = A^-1 b_gamma."""
        if theta_gamma is None:
            theta_gamma = self.solve(self.b_gamma(), **solve_kw)[0]
        return self.dC_dgamma() + float(self.grad_C() @ theta_gamma)

    # -- functionals (eq. 1, 4, 10) -------------------------------------------------------
    def functionals(self, lam: float | None = None, gamma: float | None = None,
                    recompute: bool = False) -> Functionals:
        """R, D, C, F on the held samples at (lam, gamma) (default: the operator's own);
        ``recompute`` re-evaluates the model (after its parameters moved).

        Importance weights: Gibbs expectations and F = -E_x log Z_hat (eq. 10), R = F - lam D
        - gamma C. Uniform: encoder expectations (eq. 1, 4), F = R + lam D + gamma C.
        """
        lam = self.lam if lam is None else lam
        gamma = self.gamma if gamma is None else gamma
        with torch.no_grad():
            if (lam, gamma) == (self.lam, self.gamma) and not recompute:
                terms, means = self._terms, self.means
            else:
                terms = self._evaluate(lam, gamma)
                w = gibbs_weights(terms["H"], self._logq_for(terms["H"]),
                                  backend=self.backend).exp()
                fields = torch.stack([-terms["log_d"], terms["log_c"],
                                      self.log_q - terms["log_m"]], -1)
                means = gibbs_moments(w, fields.contiguous(), backend=self.backend)[0]
            D = float((self.pi * means[:, 0]).sum())
            C = float((self.pi * -means[:, 1]).sum())
            if self.weights == "importance":
                F = float(self._J(terms)) + math.log(self.samples)
                R = F - lam * D - gamma * C
            else:
                R = float((self.pi * means[:, 2]).sum())
                F = R + lam * D + gamma * C
        return Functionals(R, D, C, F)

    # -- linear solves --------------------------------------------------------------------
    def solve(self, b: torch.Tensor, method: str = "minres", damping: float = 0.0,
              maxiter: int = 100, rtol: float = 1e-6,
              warn: bool = True) -> tuple[torch.Tensor, SolveInfo]:
        """x ~ (A + damping I)^-1 b by MINRES (default; A is indefinite away from equilibrium)
        or conjugate gradients, each step one :meth:`hvp`; stops at ||r|| <= rtol ||b||.
        An unconverged solve says so in the returned info and, unless ``warn=False`` (a caller
        that records info itself, e.g. the processes' truncated solves), warns."""
        _checks.finite("b", self._check_vector("b", b))
        _checks.choice("method", method, METHODS)
        damping = _checks.nonneg_float("damping", damping)
        _checks.positive_int("maxiter", maxiter)
        rtol = _checks.nonneg_float("rtol", rtol)

        def op(u):
            return self.hvp(u) + damping * u if damping else self.hvp(u)

        fn = minres if method == "minres" else conjugate_gradient
        x, info = fn(op, b, maxiter=maxiter, rtol=rtol)
        if warn and not info.converged:
            rel = info.residual_norms[-1] / info.residual_norms[0]
            warnings.warn(f"GibbsOperator.solve: {method} stopped unconverged after {maxiter} "
                          f"iterations (relative residual {rel:.2e} > rtol={rtol:g}); the "
                          f"result is in info (converged=False)", RuntimeWarning, stacklevel=2)
        return x, info


def minres(op, b: torch.Tensor, *, maxiter: int, rtol: float) -> tuple[torch.Tensor, SolveInfo]:
    """MINRES (Paige & Saunders 1975) for a symmetric, possibly indefinite or singular
    operator on flat vectors, x0 = 0; ``residual_norms`` is its monotone ||b - A x_k||.
    The Lanczos vectors are updated in place (``op``'s result is overwritten)."""
    x = torch.zeros_like(b)
    beta1 = float(b.norm())
    info = SolveInfo("minres", 0, beta1 == 0.0, [beta1])
    if beta1 == 0.0:
        return x, info
    v_old, v = torch.zeros_like(b), b / beta1
    w, w_old = torch.zeros_like(b), torch.zeros_like(b)
    beta, dbar, eps_k, phibar, cs, sn = beta1, 0.0, 0.0, beta1, -1.0, 0.0
    for k in range(1, maxiter + 1):
        p = op(v)  # Lanczos step, in place: p <- A v - alpha v - beta v_old
        if p.data_ptr() == v.data_ptr():
            p = p.clone()
        alpha = float(torch.dot(v, p))
        p.sub_(v, alpha=alpha).sub_(v_old, alpha=beta)
        beta_next = float(p.norm())
        old_eps = eps_k
        delta = cs * dbar + sn * alpha
        gbar = sn * dbar - cs * alpha
        eps_k = sn * beta_next
        dbar = -cs * beta_next
        gam = max(math.hypot(gbar, beta_next), 1e-300)
        cs, sn = gbar / gam, beta_next / gam
        phi, phibar = cs * phibar, sn * phibar
        # w_new = (v - old_eps w_old - delta w) / gam, written over w_old
        w_old.mul_(-old_eps).sub_(w, alpha=delta).add_(v).div_(gam)
        w, w_old = w_old, w
        x.add_(w, alpha=phi)
        info.iterations = k
        info.residual_norms.append(abs(phibar))
        if abs(phibar) <= rtol * beta1 or beta_next <= 1e-14 * beta1:
            info.converged = True
            break
        v_old, v, beta = v, p.div_(beta_next), beta_next
    return x, info


def conjugate_gradient(op, b: torch.Tensor, *, maxiter: int,
                       rtol: float) -> tuple[torch.Tensor, SolveInfo]:
    """Conjugate gradients, x0 = 0; flags negative curvature (p.Ap <= 0) but continues."""
    x, r = torch.zeros_like(b), b.clone()
    p, rr, beta1 = r.clone(), float(r @ r), float(b.norm())
    info = SolveInfo("cg", 0, beta1 == 0.0, [beta1])
    for k in range(1, maxiter + 1):
        if info.converged:
            break
        Ap = op(p)
        pAp = float(p @ Ap)
        if pAp <= 0:
            info.negative_curvature = True
        alpha = rr / pAp if pAp != 0 else 0.0
        x = x + alpha * p
        r = r - alpha * Ap
        rr_new = float(r @ r)
        info.iterations = k
        info.residual_norms.append(math.sqrt(rr_new))
        if math.sqrt(rr_new) <= rtol * beta1 or pAp == 0:
            info.converged = math.sqrt(rr_new) <= rtol * beta1
            break
        p, rr = r + (rr_new / rr) * p, rr_new
    return x, info

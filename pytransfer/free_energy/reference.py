"""Plain-torch specification of the two fused Gibbs kernels.

Per datum x (a row), S samples z_s ~ e(z|x) carry the Hamiltonian H_s (eq. 11) and the
proposal log-density log e_s. The self-normalised importance weights of the Gibbs measure
exp(-H) are w_s = softmax_s(-H_s - log e_s); every Gibbs expectation <phi> of Lemma 5 and
eq. 21 is then a weighted mean, and every covariance term a weighted covariance. These
functions are differentiable to any order and define the compiled backends' results.
"""

from __future__ import annotations

import torch


def gibbs_weights_reference(neg_log_joint: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Log-weights log w (X, S) = log_softmax_s(-neg_log_joint - log_q)."""
    return torch.log_softmax(-neg_log_joint - log_q, dim=1)


def gibbs_weights_backward_reference(grad: torch.Tensor, log_w: torch.Tensor) -> torch.Tensor:
    """d/d(neg_log_joint) of <grad, log w>: -(grad - w sum_s grad) (= d/d(log_q) too)."""
    return log_w.exp() * grad.sum(1, keepdim=True) - grad


def gibbs_moments_reference(
    weights: torch.Tensor, fields: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted means m = sum_s w_s f_s (X, K) and covariances sum_s w_s (f_s-m)(f_s-m)^T."""
    means = torch.einsum("xs,xsk->xk", weights, fields)
    d = fields - means[:, None, :]
    cov = torch.einsum("xs,xsk,xsl->xkl", weights, d, d)
    return means, cov


def gibbs_moments_backward_reference(
    weights: torch.Tensor, fields: torch.Tensor, means: torch.Tensor,
    grad_means: torch.Tensor, grad_cov: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_weights (X, S), grad_fields (X, S, K)) of ``gibbs_moments_reference``.

    With d_s = f_s - m, G = grad_cov + grad_cov^T, q_s = G d_s and p = sum_s w_s q_s:
    grad_w_s = f_s.grad_means + d_s^T grad_cov d_s - f_s.p and
    grad_f_s = w_s (grad_means + q_s - p) (weights need not sum to one).
    """
    d = fields - means[:, None, :]
    sym = grad_cov + grad_cov.transpose(1, 2)
    q = torch.einsum("xkl,xsl->xsk", sym, d)
    p = torch.einsum("xs,xsk->xk", weights, q)
    grad_w = (torch.einsum("xsk,xk->xs", fields, grad_means - p)
              + torch.einsum("xsk,xkl,xsl->xs", d, grad_cov, d))
    grad_f = weights[:, :, None] * (grad_means[:, None, :] + q - p[:, None, :])
    return grad_w, grad_f

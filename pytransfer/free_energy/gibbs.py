"""``gibbs_weights`` and ``gibbs_moments``: the fused per-datum kernels behind every Gibbs
expectation of Lemma 5 and eq. 21, with backend dispatch."""

from __future__ import annotations

import torch

from pytransfer import _checks, _dispatch
from pytransfer.free_energy import _ops


def gibbs_weights(
    neg_log_joint: torch.Tensor, log_q: torch.Tensor, *, backend: str = "auto",
    check_inputs: bool = True,
) -> torch.Tensor:
    """Self-normalised importance log-weights log w = log_softmax_s(-H - log e), shape (X, S).

    Args:
        neg_log_joint: H_s(x) (eq. 11) of S samples per datum, (X, S).
        log_q: log e(z_s|x) of the proposal at the samples, (X, S).
        backend: "auto", "reference", "cpu" or "triton" (see ``pytransfer.backends``).
        check_inputs: reject NaN/+-Inf H, logits -H - log q that overflow the dtype and rows
            whose logits are all -inf (a host sync).
    """
    for name, x in (("neg_log_joint", neg_log_joint), ("log_q", log_q)):
        _checks.floating(name, x)
        _checks.ndim(name, x, (2,))
    device = _checks.same_device(neg_log_joint=neg_log_joint, log_q=log_q)
    dtype = _checks.same_dtype(neg_log_joint=neg_log_joint, log_q=log_q)
    if log_q.shape != neg_log_joint.shape:
        raise ValueError(f"log_q must have the shape of neg_log_joint {tuple(neg_log_joint.shape)},"
                         f" got {tuple(log_q.shape)}")
    if neg_log_joint.shape[1] < 1:
        raise ValueError("neg_log_joint must hold at least one sample per row (S >= 1)")
    if check_inputs:
        _checks.finite("neg_log_joint", neg_log_joint)
        if bool(torch.isnan(log_q).any()) or bool((log_q == float("-inf")).any()):
            raise ValueError("log_q contains NaN or -inf (a sample the proposal cannot draw)")
        over = (torch.isinf(neg_log_joint + log_q) & torch.isfinite(log_q)).nonzero()
        if over.numel():
            raise ValueError(f"-neg_log_joint - log_q overflows {dtype} at datum x index "
                             f"{int(over[0, 0])} (finite terms near the dtype's maximum); "
                             f"compute them in float64")
        dead = torch.isinf(log_q).all(1).nonzero()
        if dead.numel():
            raise ValueError(f"all weights are zero (every logit -inf) for datum x index "
                             f"{int(dead[0, 0])}")
    _, fn = _dispatch.resolve(_ops.WEIGHTS_OP, backend, device.type, S=neg_log_joint.shape[1],
                              dtype=dtype)
    return fn(neg_log_joint, log_q)


def gibbs_moments(
    weights: torch.Tensor, fields: torch.Tensor, *, backend: str = "auto",
    check_inputs: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted means (X, K) and covariances (X, K, K) of K scalar fields per datum.

    ``means = sum_s w_s f_s``, ``cov = sum_s w_s (f_s - means)(f_s - means)^T``: the Gibbs
    expectations <phi> and covariances Cov(phi, psi) of eq. 17 and 21 (fields such as
    dH/dlambda = -log d, dH/dgamma = -log c and l = log c).

    Args:
        weights: w (X, S), normally ``gibbs_weights(...).exp()`` (rows summing to one).
        fields: f (X, S, K).
        backend, check_inputs: as for ``gibbs_weights`` (checks: finite, weights >= 0).
    """
    _checks.floating("weights", weights)
    _checks.floating("fields", fields)
    _checks.ndim("weights", weights, (2,))
    _checks.ndim("fields", fields, (3,))
    device = _checks.same_device(weights=weights, fields=fields)
    dtype = _checks.same_dtype(weights=weights, fields=fields)
    if fields.shape[:2] != weights.shape:
        raise ValueError(f"fields must have shape (X, S, K) with (X, S) = "
                         f"{tuple(weights.shape)} of weights, got {tuple(fields.shape)}")
    if check_inputs:
        _checks.finite("weights", weights)
        _checks.finite("fields", fields)
        _checks.nonnegative("weights", weights)
    _, fn = _dispatch.resolve(_ops.MOMENTS_OP, backend, device.type, S=fields.shape[1],
                              K=fields.shape[2], dtype=dtype)
    return fn(weights, fields)

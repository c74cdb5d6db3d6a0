"""Equilibration: Adam on the variational free energy at fixed (lambda, gamma) (eq. 8, 12) and
the learning-rate schedule eta(t) of Sec. 5.1 ("A Free-Energy Principle for Representation
Learning", Gao & Chaudhari, ICML 2020)."""

from __future__ import annotations

import torch

from pytransfer.methods.free_energy.paths import sample_batch


def variational_free_energy(model, x: torch.Tensor, y: torch.Tensor, lam: float, gamma: float,
                            samples: int = 1) -> torch.Tensor:
    """E_x E_{e(z|x)}[H + log e] = R + lam D + gamma C (eq. 8, 12) with reparameterised samples:
    an upper bound on F, minimised over every parameter, the encoder included."""
    q = model.encode(x)
    z = q.rsample((samples,))
    H = -model.log_prior(z) - lam * model.log_decoder(x, z) - gamma * model.log_classifier(y, z)
    return (H + q.log_prob(z)).mean()


def eta_schedule(step: int, total: int, power: float = 1.0) -> float:
    """eta(t) = (t/T)^2 (1 - t/T)^power normalised to peak 1 (Sec. 5.1; the arXiv text has
    power 5, the conference version 1)."""
    s = step / total
    peak_s = 2.0 / (2.0 + power)
    return (s * s * (1 - s) ** power) / (peak_s**2 * (1 - peak_s) ** power)


def equilibrate(model, data: tuple[torch.Tensor, torch.Tensor], lam: float, gamma: float, *,
                steps: int, lr: float = 1e-3, batch_size: int = 64, samples: int = 1,
                optimizer: torch.optim.Optimizer | None = None, schedule_power: float | None = None,
                generator: torch.Generator | None = None) -> torch.optim.Optimizer:
    """Adam on the variational free energy at fixed (lam, gamma) (eq. 12): brings theta to the
    equilibrium surface and the encoder to the Gibbs measure. ``schedule_power`` set: the
    learning rate follows :func:`eta_schedule` with peak ``lr`` (Sec. 5.1)."""
    opt = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
    gen = generator or torch.Generator().manual_seed(0)
    for k in range(steps):
        if schedule_power is not None:
            for g in opt.param_groups:
                g["lr"] = lr * eta_schedule(k + 1, steps + 1, schedule_power)
        x, y = sample_batch(data, batch_size, gen)
        loss = variational_free_energy(model, x, y, lam, gamma, samples)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return opt

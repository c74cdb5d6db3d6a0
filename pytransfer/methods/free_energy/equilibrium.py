"""Equilibration: Adam on the variational free energy at fixed (lambda, gamma) (eq. 8, 12) and
the learning-rate schedule eta(t) of Sec. 5.1 ("A Free-Energy Principle for Representation
Learning", Gao & Chaudhari, ICML 2020). Equilibration is SGD, so it runs on the shared trainer
(``pytransfer.methods._trainer``): seeded epoch-wise batches, progress, optional run folder and
exact resume."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from pytransfer.methods._trainer import StepContext, Trainer


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


def equilibrium_step(model, data: tuple[torch.Tensor, torch.Tensor], lam: float, gamma: float,
                     *, steps: int, lr: float, batch_size: int, samples: int = 1,
                     optimizer: torch.optim.Optimizer,
                     schedule_power: float | None = None) -> Callable[[StepContext], tuple]:
    """The trainer's step function of :func:`equilibrate`: sets the learning rate of step k to
    ``lr * eta_schedule(k + 1, steps + 1, schedule_power)`` when a power is given, and returns
    this rank's share of the variational free energy (eq. 12) of the next ``"data"`` batch."""
    x, y = data

    def step(ctx: StepContext):
        if schedule_power is not None:
            for g in optimizer.param_groups:
                g["lr"] = lr * eta_schedule(ctx.step + 1, steps + 1, schedule_power)
        b = ctx.batch("data", n=x.shape[0], size=batch_size)
        share = b.idx.numel() / b.total
        f = variational_free_energy(model, x[b.idx], y[b.idx], lam, gamma, samples) * share
        return f, {"lr": torch.tensor(optimizer.param_groups[0]["lr"] * share, dtype=f.dtype)}

    return step


def equilibrate(model, data: tuple[torch.Tensor, torch.Tensor], lam: float, gamma: float, *,
                steps: int, lr: float = 1e-3, batch_size: int = 64, samples: int = 1,
                optimizer: torch.optim.Optimizer | None = None, schedule_power: float | None = None,
                generator: torch.Generator | None = None, seed: int = 0,
                run_dir: str | Path | None = None, resume: bool = False,
                progress: Callable | None = None) -> torch.optim.Optimizer:
    """Adam on the variational free energy at fixed (lam, gamma) (eq. 12): brings theta to the
    equilibrium surface and the encoder to the Gibbs measure. ``schedule_power`` set: the
    learning rate follows :func:`eta_schedule` with peak ``lr`` (Sec. 5.1).

    ``steps`` steps of the shared trainer on :func:`equilibrium_step`; batches of
    ``min(batch_size, N)`` rows from its seeded epoch-wise permutations of the data. The seed is
    ``seed``, or, with ``generator`` (a process's), one integer drawn from it, so a process that
    checkpoints its generator replays its equilibrations exactly. ``optimizer``: reused (a
    process keeps Adam's moments across its re-equilibrations), else a new Adam. ``run_dir``,
    ``resume`` and ``progress(step, total, record)`` are the trainer's (config.json,
    metrics.jsonl and checkpoint.pt; continue a killed run). The model's train/eval mode is
    kept. Returns the optimizer."""
    opt = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
    if generator is not None:
        seed = int(torch.randint(0, 2**62, (), generator=generator))
    step = equilibrium_step(model, data, lam, gamma, steps=steps, lr=lr, batch_size=batch_size,
                            samples=samples, optimizer=opt, schedule_power=schedule_power)
    settings = {"lam": lam, "gamma": gamma, "lr": lr, "batch_size": batch_size,
                "samples": samples, "schedule_power": schedule_power, "n": int(data[0].shape[0])}
    was = model.training
    trainer = Trainer(model, opt, step, steps=steps, seed=seed, method="equilibrate",
                      settings=settings, run_dir=run_dir, resume=resume,
                      log_every=max(1, steps // 100))
    try:
        trainer.fit(progress)
    finally:
        model.train(was)
    return opt

"""Settings and state of a free-energy process (iso-classification or transfer)."""

from __future__ import annotations

from dataclasses import dataclass, field

VARIANTS = ("exact", "practical")
RULES = ("constant-lambda", "geodesic")


@dataclass
class ProcessConfig:
    """Settings of an iso-classification or transfer process.

    ``lam_rate``: lambda-dot of the exact process (lambda moves by lam_rate over the process);
    ``alpha``: time scale of the practical variant (eq. 22/31); ``fd_step``: its finite
    difference in (lambda, gamma); ``equil_steps``: re-equilibration steps after each Euler
    step (the practical variant's schedule eta(t)); ``eval_seed`` fixes the evaluation samples;
    ``slope``: k = dD/dR of the geodesic transfer (eq. 30; the paper leaves it free);
    ``ot_eps``: Sinkhorn regularisation of the OT interpolation (relative to the mean cost).
    """

    steps: int = 20
    lam_rate: float = 1.0
    alpha: float = 1.0
    fd_step: float = 1e-3
    samples: int = 32
    weights: str = "importance"
    batch_size: int = 64
    minres_iters: int = 30
    minres_rtol: float = 1e-6
    damping: float = 0.0
    equil_steps: int = 0
    equil_lr: float = 1e-3
    schedule_power: float = 1.0
    eval_seed: int = 0
    seed: int = 0
    slope: float = -1.0
    ot_eps: float = 0.05


@dataclass
class ProcessState:
    step: int
    lam: float
    gamma: float
    t: float = 0.0
    records: list[dict] = field(default_factory=list)

"""The free-energy part of ``pytransfer demo``: iso-classification on sklearn digits."""

from __future__ import annotations

import copy

import torch
from rich.table import Table

from pytransfer.data import digits_transfer
from pytransfer.free_energy import digits_model
from pytransfer.methods.free_energy.config import VARIANTS, ProcessConfig
from pytransfer.methods.free_energy.equilibrium import equilibrate
from pytransfer.methods.free_energy.process import iso_classification


def run_demo(console, quick: bool = False) -> list[dict]:
    """Iso-classification on sklearn digits, both variants from one equilibrated model; prints
    a table of (t, lambda, gamma, R, D, C) per variant. Returns the two records."""
    torch.manual_seed(0)
    d = digits_transfer()
    data = (torch.cat([d.xs, d.xt_train, d.xt_test]),
            torch.cat([d.ys, d.yt_train + 5, d.yt_test + 5]))
    lam, gamma = 0.5, 2.0
    model = digits_model(latent=4, hidden=32)
    equilibrate(model, data, lam, gamma, steps=150 if quick else 600, lr=3e-3, batch_size=128)
    steps = 4 if quick else 8
    out = []
    for variant in VARIANTS:
        m = copy.deepcopy(model)
        cfg = ProcessConfig(steps=steps, lam_rate=lam, alpha=1.0, samples=16, batch_size=64,
                            minres_iters=15, damping=1e-3, equil_steps=10, equil_lr=1e-3)
        recs = iso_classification(m, data, lam, gamma, cfg, variant=variant)
        table = Table(title=f"free-energy iso-classification on digits: {variant}")
        for col in ("t", "lambda", "gamma", "R", "D", "C"):
            table.add_column(col, justify="right")
        for r in recs:
            table.add_row(f"{r['t']:.2f}", f"{r['lam']:.3f}", f"{r['gamma']:.3f}",
                          f"{r['R']:.3f}", f"{r['D']:.3f}", f"{r['C']:.4f}")
        console.print(table)
        out.append(recs)
    return out

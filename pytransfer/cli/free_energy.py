"""``pytransfer free-energy iso-classification | transfer`` on the embedded 8x8 digits: an
equilibrated model, then the process (eq. 17-22, 31 or Lemma 9 with eq. 30/38), writing the
JSONL record and the R-D / C plots (``pytransfer.report``) to ``--out``. Every option is
checked before training, and an existing record or plot is never overwritten."""

from __future__ import annotations

import dataclasses
import math
from enum import Enum
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console
from rich.progress import Progress

from pytransfer.cli._common import fail, positive, user_errors

app = typer.Typer(help="Free-energy processes on sklearn digits (Gao & Chaudhari, ICML 2020)",
                  no_args_is_help=True)
console = Console()


class Variant(str, Enum):
    exact = "exact"
    practical = "practical"


class Rule(str, Enum):
    constant_lambda = "constant-lambda"
    geodesic = "geodesic"


class Interpolation(str, Enum):
    ot = "ot"
    mixture = "mixture"


OUT = Annotated[Path, typer.Option(help="folder for the JSONL record and the PNG plots (an "
                                        "existing record there is never overwritten)")]
LAM = Annotated[float, typer.Option(help="initial lambda (> 0)")]
GAMMA = Annotated[float, typer.Option(help="initial gamma (> 0)")]
STEPS = Annotated[int | None, typer.Option(min=1, help="process steps (default 10, quick 3)")]
SEED = Annotated[int, typer.Option(min=0, help="seed of the model and the process")]
QUICK = Annotated[bool, typer.Option(help="small data, model and process")]


def _digits(quick: bool):
    """Source: digits 0-4; target: 5-9 (labels 5-9, one 10-way classifier); float64."""
    from pytransfer.data import digits_transfer

    d = digits_transfer(dtype=torch.float64)
    src, tgt = (d.xs, d.ys), (torch.cat([d.xt_train, d.xt_test]),
                              torch.cat([d.yt_train, d.yt_test]) + 5)
    if quick:
        g = torch.Generator().manual_seed(0)
        src = tuple(v[torch.randperm(src[0].shape[0], generator=g)[:300]] for v in src)
        tgt = tuple(v[torch.randperm(tgt[0].shape[0], generator=g)[:300]] for v in tgt)
    return src, tgt


def _model(data, lam: float, gamma: float, quick: bool, seed: int):
    from pytransfer.free_energy import digits_model
    from pytransfer.methods.free_energy import equilibrate

    torch.manual_seed(seed)
    model = digits_model(latent=3 if quick else 4, hidden=16 if quick else 32).double()
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("equilibrating", total=150 if quick else 600)
        equilibrate(model, data, lam, gamma, steps=150 if quick else 600, lr=1e-2 if quick
                    else 3e-3, batch_size=128, seed=seed,
                    progress=lambda step, total, record: bar.update(task, completed=step))
    return model


def _config(quick: bool, steps: int | None, lam: float, seed: int):
    from pytransfer.methods.free_energy import ProcessConfig

    return ProcessConfig(steps=steps or (3 if quick else 10), lam_rate=lam,
                         samples=8 if quick else 16, batch_size=64,
                         minres_iters=15 if quick else 30, damping=1e-3,
                         equil_steps=0 if quick else 10, seed=seed)


def _check(out: Path, stem: str, lam: float, gamma: float) -> Path:
    """Every check that needs no training; returns the record's path (created by the run)."""
    positive("--lam", lam)
    positive("--gamma", gamma)
    if out.exists() and not out.is_dir():
        fail(f"--out {out} is a file, not a folder")
    for path in (out / f"{stem}.jsonl", out / f"{stem}_rd.png", out / f"{stem}_C.png"):
        if path.exists():
            fail(f"{path} already exists; choose a new --out (nothing is overwritten)")
    with user_errors():
        out.mkdir(parents=True, exist_ok=True)
    return out / f"{stem}.jsonl"


def _run(log: Path, stem: str, total: int, fn) -> list[dict]:
    from pytransfer.report import plot_record

    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(stem, total=total)
        records = fn(str(log), lambda step: progress.update(task, completed=step))
    rd, c = plot_record(log, log.parent, stem)
    last = records[-1]
    console.print(f"{stem}: t={last['t']:.2f} lambda={last['lam']:.3f} gamma={last['gamma']:.3f}"
                  f" C {records[0]['C']:.4f} -> {last['C']:.4f}; wrote {log}, {rd.name}, "
                  f"{c.name}")
    return records


@app.command("iso-classification")
def iso_classification(out: OUT, variant: Annotated[Variant, typer.Option(
                           help="exact (eq. 17-21) or practical (eq. 22/31)")] = Variant.exact,
                       lam: LAM = 0.5, gamma: GAMMA = 2.0, steps: STEPS = None, seed: SEED = 0,
                       quick: QUICK = False) -> None:
    """Iso-classification on digits 0-9 from an equilibrated model: lambda doubles (exact) or
    follows eq. 22 (practical) while C is held."""
    from pytransfer.methods import free_energy as fe

    stem = f"iso_{variant.value}"
    log = _check(out, stem, lam, gamma)
    src, tgt = _digits(quick)
    data = (torch.cat([src[0], tgt[0]]), torch.cat([src[1], tgt[1]]))
    model = _model(data, lam, gamma, quick, seed)
    cfg = _config(quick, steps, lam, seed)
    _run(log, stem, cfg.steps, lambda path, cb: fe.iso_classification(
        model, data, lam, gamma, cfg, variant=variant.value, log_path=path, progress=cb))


@app.command()
def transfer(out: OUT, rule: Annotated[Rule, typer.Option(
                 help="constant-lambda (eq. 38) or geodesic (eq. 30)")] = Rule.constant_lambda,
             interpolation: Annotated[Interpolation, typer.Option(
                 help="ot (Appendix F) or mixture (eq. 23)")] = Interpolation.ot,
             lam: LAM = 0.5, gamma: GAMMA = 2.0,
             slope: Annotated[float, typer.Option(
                 help="dD/dR of the geodesic rule (eq. 30), finite")] = -1.0,
             steps: STEPS = None, seed: SEED = 0, quick: QUICK = False) -> None:
    """Iso-classification transfer digits 0-4 -> 5-9 (Lemma 9) from a model equilibrated on
    the source."""
    from pytransfer.methods import free_energy as fe

    if not math.isfinite(slope):
        fail(f"--slope must be finite, got {slope}")
    stem = f"transfer_{rule.value}_{interpolation.value}"
    log = _check(out, stem, lam, gamma)
    src, tgt = _digits(quick)
    model = _model(src, lam, gamma, quick, seed)
    cfg = dataclasses.replace(_config(quick, steps, lam, seed), slope=slope)
    _run(log, stem, cfg.steps, lambda path, cb: fe.transfer(
        model, src, tgt, lam, gamma, cfg, rule=rule.value, interpolation=interpolation.value,
        log_path=path, progress=cb))

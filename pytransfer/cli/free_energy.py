"""``pytransfer free-energy iso-classification | transfer`` on the embedded 8x8 digits: an
equilibrated model, then the process (eq. 17-22, 31 or Lemma 9 with eq. 30/38), writing the
JSONL record and the R-D / C plots (``pytransfer.report``) to ``--out``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console
from rich.progress import Progress

app = typer.Typer(help="Free-energy processes on sklearn digits (Achille et al.)",
                  no_args_is_help=True)
console = Console()


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
    with console.status("equilibrating"):
        equilibrate(model, data, lam, gamma, steps=150 if quick else 600, lr=1e-2 if quick
                    else 3e-3, batch_size=128)
    return model


def _config(quick: bool, steps: int | None, lam: float):
    from pytransfer.methods.free_energy import ProcessConfig

    return ProcessConfig(steps=steps or (3 if quick else 10), lam_rate=lam,
                         samples=8 if quick else 16, batch_size=64,
                         minres_iters=15 if quick else 30, damping=1e-3,
                         equil_steps=0 if quick else 10)


def _finish(out: Path, stem: str, records: list[dict]) -> None:
    from pytransfer.report import plot_record

    rd, c = plot_record(out / f"{stem}.jsonl", out, stem)
    last = records[-1]
    console.print(f"{stem}: t={last['t']:.2f} lambda={last['lam']:.3f} gamma={last['gamma']:.3f}"
                  f" C {records[0]['C']:.4f} -> {last['C']:.4f}; wrote {out / (stem + '.jsonl')},"
                  f" {rd.name}, {c.name}")


def _run(out: Path, stem: str, total: int, fn) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    log = out / f"{stem}.jsonl"
    log.unlink(missing_ok=True)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(stem, total=total)
        records = fn(str(log), lambda step: progress.update(task, completed=step))
    _finish(out, stem, records)
    return records


@app.command("iso-classification")
def iso_classification(
        out: Annotated[Path, typer.Option(help="folder for the JSONL record and the PNG plots")],
        variant: str = typer.Option("exact", help="exact (eq. 17-21) or practical (eq. 22/31)"),
        lam: float = typer.Option(0.5, help="initial lambda"),
        gamma: float = typer.Option(2.0, help="initial gamma"),
        steps: int = typer.Option(None, help="process steps (default 10, quick 3)"),
        seed: int = typer.Option(0),
        quick: bool = typer.Option(False, help="small data, model and process")) -> None:
    """Iso-classification on digits 0-9 from an equilibrated model: lambda doubles (exact) or
    follows eq. 22 (practical) while C is held."""
    from pytransfer.methods import free_energy as fe

    src, tgt = _digits(quick)
    data = (torch.cat([src[0], tgt[0]]), torch.cat([src[1], tgt[1]]))
    model = _model(data, lam, gamma, quick, seed)
    cfg = _config(quick, steps, lam)
    _run(out, f"iso_{variant}", cfg.steps, lambda log, cb: fe.iso_classification(
        model, data, lam, gamma, cfg, variant=variant, log_path=log, progress=cb))


@app.command()
def transfer(
        out: Annotated[Path, typer.Option(help="folder for the JSONL record and the PNG plots")],
        rule: str = typer.Option("constant-lambda", help="constant-lambda (eq. 38) or geodesic "
                                 "(eq. 30)"),
        interpolation: str = typer.Option("ot", help="ot (Appendix F) or mixture (eq. 23)"),
        lam: float = typer.Option(0.5, help="initial lambda"),
        gamma: float = typer.Option(2.0, help="initial gamma"),
        slope: float = typer.Option(-1.0, help="dD/dR of the geodesic rule (eq. 30)"),
        steps: int = typer.Option(None, help="process steps (default 10, quick 3)"),
        seed: int = typer.Option(0),
        quick: bool = typer.Option(False, help="small data, model and process")) -> None:
    """Iso-classification transfer digits 0-4 -> 5-9 (Lemma 9) from a model equilibrated on
    the source."""
    from pytransfer.methods import free_energy as fe

    src, tgt = _digits(quick)
    model = _model(src, lam, gamma, quick, seed)
    cfg = dataclasses.replace(_config(quick, steps, lam), slope=slope)
    _run(out, f"transfer_{rule}_{interpolation}", cfg.steps, lambda log, cb: fe.transfer(
        model, src, tgt, lam, gamma, cfg, rule=rule, interpolation=interpolation,
        log_path=log, progress=cb))

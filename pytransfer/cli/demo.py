"""``pytransfer demo``: the main job on the embedded digits."""

from __future__ import annotations

import time

import torch
import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

console = Console()


def demo(steps: int = typer.Option(300, help="JTLN training steps per run"),
         seeds: int = typer.Option(3, help="JTLN runs per setting"),
         target_per_class: int = typer.Option(5, help="labelled target samples per class"),
         eps: float = typer.Option(0.1, help="entropic regularisation (JTLN's 1/lambda)"),
         quick: bool = typer.Option(False, help="shorter runs of every method")) -> None:
    """The main job on sklearn digits (0-4 -> 5-9), one table per method: JTLN with the OT
    loss vs joint training, H-score ranking of layers and source tasks against the accuracy
    transfer reaches, and the free-energy iso-classification process."""
    from pytransfer.methods import free_energy, hscore_demo

    torch.set_num_threads(1)  # small models: intra-op threads only add overhead
    _jtln_demo(steps, seeds, target_per_class, eps)
    hscore_demo.run_demo(console, quick=quick)
    free_energy.run_demo(console, quick=quick)


def _jtln_demo(steps: int, seeds: int, target_per_class: int, eps: float) -> None:
    from pytransfer.data import digits_transfer
    from pytransfer.methods.jtln import (
        JTLN,
        JTLNConfig,
        mmd_class_cost,
        target_accuracy,
        train_jtln,
    )

    settings = {"joint training, no OT (alpha=0)": 0.0, "JTLN, OT loss (alpha=0.1)": 0.1}
    results: dict[str, list[float]] = {k: [] for k in settings}
    times: dict[str, float] = dict.fromkeys(settings, 0.0)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("training", total=steps * seeds * len(settings))
        for seed in range(seeds):
            data = digits_transfer(target_per_class=target_per_class, seed=seed)
            cost = mmd_class_cost(data.xs, data.ys, data.xt_train, data.yt_train, 5, 5)
            for name, alpha in settings.items():
                torch.manual_seed(seed)
                model = JTLN(64, 5, 5)
                cfg = JTLNConfig(steps=steps, alpha=alpha, eps=eps, seed=seed)
                t0 = time.perf_counter()
                train_jtln(model, cost, data.xs, data.ys, data.xt_train, data.yt_train,
                           data.xt_test, cfg, progress=lambda: progress.advance(task))
                times[name] += time.perf_counter() - t0
                results[name].append(target_accuracy(model, data.xt_test, data.yt_test))
    table = Table(title=f"digits 0-4 -> 5-9, {target_per_class} target labels/class, "
                        f"{seeds} seeds, {steps} steps")
    table.add_column("method")
    table.add_column("target test accuracy", justify="right")
    table.add_column("train time / run (s)", justify="right")
    for name, accs in results.items():
        acc = torch.tensor(accs)
        table.add_row(name, f"{acc.mean():.3f} ± {acc.std(correction=0):.3f}",
                      f"{times[name] / seeds:.2f}")
    console.print(table)


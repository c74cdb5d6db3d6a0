"""``pytransfer jtln``: train JTLN (or one of its baselines) over label counts and seeds.

Under ``torchrun --nproc-per-node N -m pytransfer jtln ...`` every run trains with DDP (gloo
on CPU, NCCL on GPU), each batch sharded over the processes.
"""

from __future__ import annotations

import json
import math
from enum import Enum
from pathlib import Path

import typer

from pytransfer.cli._common import user_errors


class Task(str, Enum):
    digits = "digits"
    styles = "styles"


class Method(str, Enum):
    jtln = "jtln"
    joint = "joint"
    consecutive = "consecutive"
    target_only = "target-only"


class Cost(str, Enum):
    mmd = "mmd"
    ot = "ot"


class OTInputs(str, Enum):
    labelled_target = "labelled-target"
    target = "target"
    all = "all"


class Grad(str, Enum):
    dual = "dual"
    implicit = "implicit"


class Normalise(str, Enum):
    range = "range"
    max = "max"
    none = "none"


class KernelWeights(str, Enum):
    uniform = "uniform"
    optimized = "optimized"


def parse_labels(text: str) -> list[int]:
    """``"5,10,20"`` -> [5, 10, 20] (labelled target samples per class, each >= 1)."""
    try:
        out = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--labels must be comma-separated integers, got {text!r}") from None
    if not out or min(out) < 1:
        raise ValueError(f"--labels must be integers >= 1, got {text!r}")
    return out


def load_task(data: str, task: str, labels: int, seed: int):
    """The transfer task: ``digits`` (``task`` digits|styles) or any ``pytransfer.data`` spec,
    whose classes are cut in two halves (source, target; see ``task_from_dataset``)."""
    from pytransfer.data.tasks import max_labels, task_from_dataset, transfer_task

    if data == "digits":
        most = max_labels(task)
        if labels > most:
            raise ValueError(f"--labels {labels}: task {task!r} has at most {most} labelled "
                             f"target samples per class")
        return transfer_task(task, labels, seed)
    try:
        from pytransfer.data import load_spec
    except ImportError:
        raise ValueError(f"--data {data!r}: this build reads only 'digits'") from None
    ds = load_spec(data)
    return task_from_dataset(ds.x, ds.y, labels, seed, name=data)


def jtln(
    data: str = typer.Option("digits", help="digits, or a data spec (mnist:PATH, npz:PATH, ...)"),
    task: Task = typer.Option(Task.digits, help="with --data digits: 0-4 -> 5-9, or the "
                              "style-sibling control"),
    method: Method = typer.Option(Method.jtln, help="JTLN or a Table 2 baseline"),
    labels: str = typer.Option("5,10,20", help="labelled target samples per class, a list"),
    seeds: int = typer.Option(3, help="runs per label count (seeds 0..N-1)"),
    steps: int = typer.Option(None, help="training steps per run (default 300)"),
    epochs: int = typer.Option(None, help="or: passes over the source set"),
    batch_size: int = typer.Option(64, help="global batch size (split over DDP processes)"),
    lr: float = typer.Option(1e-3, help="Adam learning rate"),
    alpha: float = typer.Option(1.0, help="weight of the OT loss (>= 0)"),
    eps: float = typer.Option(0.1, help="entropic regularisation of the OT loss (1/lambda)"),
    cost: Cost = typer.Option(Cost.mmd, help="class-pair cost: MK-MMD or OT of class clouds"),
    ot_inputs: OTInputs = typer.Option(OTInputs.labelled_target, help="inputs of the OT term"),
    grad: Grad = typer.Option(Grad.dual, help="OT loss gradient: eq. 11 or exact implicit"),
    normalise: Normalise = typer.Option(Normalise.range, help="class cost normalisation"),
    kernel_weights: KernelWeights = typer.Option(KernelWeights.uniform,
                                                 help="MK-MMD kernel weights"),
    pretrain_steps: int = typer.Option(300, help="steps of the source MLP giving cost features"),
    eval_every: int = typer.Option(50, help="test accuracy every N steps (0: at the end)"),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, ..."),
    out: Path = typer.Option(None, help="run folder (default runs/jtln-<timestamp>)"),
    resume: bool = typer.Option(False, help="continue the runs in --out"),
) -> None:
    """Train JTLN ("Optimal Transport for Deep Joint Transfer Learning", eq. 4) or a baseline,
    for every label count and seed; prints target test accuracy (mean ± std over seeds) and
    writes a run folder per run plus results.json and report.md."""
    import torch

    from pytransfer.methods._trainer import init_distributed, local_device, resolve_run_dir
    from pytransfer.methods.jtln import JTLNConfig

    with user_errors():
        label_counts = parse_labels(labels)
        if seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {seeds}")
        if steps is not None and epochs is not None:
            raise ValueError("give --steps or --epochs, not both")
        for name, v in (("--steps", steps), ("--epochs", epochs)):
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if resume and out is None:
            raise ValueError("--resume needs --out (the run folder to continue)")
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise ValueError(f"--device {device!r} is not a torch device") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available")
        base = JTLNConfig(method=method.value, steps=steps or 1, lr=lr, batch_size=batch_size,
                          alpha=alpha, eps=eps, cost=cost.value, ot_inputs=ot_inputs.value,
                          grad=grad.value, kernel_weights=kernel_weights.value,
                          normalise=None if normalise is Normalise.none else normalise.value,
                          pretrain_steps=pretrain_steps).check()
        if method is Method.jtln and cost is Cost.mmd and min(label_counts) < 2:
            raise ValueError("--cost mmd needs --labels >= 2 (the unbiased MMD of a class "
                             "needs two samples)")
        if eval_every < 0:
            raise ValueError(f"--eval-every must be >= 0, got {eval_every}")
        tasks = {n: load_task(data, task.value, n, 0) for n in label_counts}  # checks all first
        first = tasks[label_counts[0]]
        if epochs is not None:
            base.steps = epochs * math.ceil(len(first.xs) / batch_size)
        elif steps is None:
            base.steps = 300
        rank, world = init_distributed(dev)
        if batch_size < world:
            raise ValueError(f"--batch-size {batch_size} is smaller than the {world} processes")
        dev = local_device(dev)
        run_dir = resolve_run_dir(out, "jtln", resume)
        results = _train_all(data, task.value, tasks, label_counts, seeds, base, run_dir, dev,
                             eval_every, rank == 0)
    if rank == 0:
        _report(results, run_dir, base, data, task.value)
    if world > 1:
        torch.distributed.destroy_process_group()


def _train_all(data, task, tasks, label_counts, seeds, base, run_dir, device, eval_every,
               show) -> dict[int, list[float]]:
    import dataclasses

    from rich.progress import Progress

    from pytransfer.methods.jtln import train

    results: dict[int, list[float]] = {}
    with Progress(disable=not show, transient=True) as bar:
        total = bar.add_task("training", total=len(label_counts) * seeds * base.steps)
        for n in label_counts:
            results[n] = []
            for seed in range(seeds):
                t = tasks[n] if seed == 0 else load_task(data, task, n, seed)
                cfg = dataclasses.replace(base, seed=seed)
                bar.update(total, description=f"{base.method} labels={n} seed={seed}")
                done = bar.tasks[0].completed

                def progress(step, _total, _record, done=done):
                    bar.update(total, completed=done + step)

                kind = t.name.split(":")[0]  # digits, styles, or the spec's kind (npz, ...)
                sub = run_dir / f"{kind}-{base.method}-labels{n}-seed{seed}"
                _, res = train(t, cfg, run_dir=sub, resume=True, progress=progress,
                               eval_every=eval_every, device=device)
                results[n].append(res.final["test_acc"])
    return results


def _report(results: dict[int, list[float]], run_dir: Path, cfg, data: str, task: str) -> None:
    import torch
    from rich.console import Console
    from rich.table import Table

    from pytransfer.methods._trainer import atomic_write_text

    console = Console()
    name = f"{cfg.method}" + (f" (cost {cfg.cost}, alpha {cfg.alpha}, eps {cfg.eps}, "
                              f"normalise {cfg.normalise})" if cfg.method == "jtln" else "")
    title = f"{name} on {data if data != 'digits' else task}: target test accuracy"
    table = Table(title=title)
    table.add_column("labels / class", justify="right")
    table.add_column("accuracy (mean ± std)", justify="right")
    table.add_column("seeds", justify="right")
    lines = [f"# {title}", "", "| labels / class | accuracy (mean ± std) | seeds |",
             "| ---: | ---: | ---: |"]
    for n, accs in results.items():
        a = torch.tensor(accs, dtype=torch.float64)
        cell = f"{a.mean():.3f} ± {a.std(correction=0):.3f}"
        table.add_row(str(n), cell, str(len(accs)))
        lines.append(f"| {n} | {cell} | {len(accs)} |")
    console.print(table)
    atomic_write_text(run_dir / "results.json",
                      json.dumps({str(k): v for k, v in results.items()}, indent=2) + "\n")
    atomic_write_text(run_dir / "report.md", "\n".join(lines) + "\n")
    console.print(f"runs and report: {run_dir}")


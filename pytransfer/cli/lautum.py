"""``pytransfer lautum``: Lautum-regularised transfer and its baselines over label counts and
seeds (the Lautum paper's Tables 1-2 on the embedded digits).

Under ``torchrun --nproc-per-node N -m pytransfer lautum ...`` every run trains with DDP (gloo
on CPU), each batch sharded over the processes; the Lautum and MK-MMD terms use global-batch
statistics.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from enum import Enum
from pathlib import Path

import typer

from pytransfer.cli._common import user_errors


class Method(str, Enum):
    lautum = "lautum"
    mmd = "mmd"
    te = "te"
    standard = "standard"
    all = "all"


def parse_labels(text: str, num_target: int) -> tuple[int, ...]:
    """``"50,100,200"`` -> (50, 100, 200): labelled target samples in total, each a positive
    multiple of the number of target classes."""
    try:
        out = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--labels must be comma-separated integers, got {text!r}") from None
    if not out or any(n < num_target or n % num_target for n in out):
        raise ValueError(f"--labels must be positive multiples of the {num_target} target "
                         f"classes, got {text!r}")
    return out


def lautum(
    data: str = typer.Option("digits", "--data", "--source",
                             help="digits (embedded: 0-4 -> 5-9, no --target), or the source "
                                  "data spec: mnist:PATH | cifar10:PATH | folder:PATH[:HxW] | "
                                  "cifar100:PATH[:classes]"),
    target: str = typer.Option(None, help="the target data spec when --data is not digits, "
                                          "e.g. folder:notMNIST_small or cifar100:PATH "
                                          "(default classes 0-9); a quarter of each class is "
                                          "held out as the test split"),
    labels: str = typer.Option(None, help="labelled target samples in total, a list "
                                          "(default 50,100,200; 100,200,500 for cifar100)"),
    seeds: int = typer.Option(3, help="runs per method and label count (seeds 0..N-1)"),
    method: Method = typer.Option(Method.all, help="one method, or all four"),
    pre_steps: int = typer.Option(600, help="pre-transfer steps (source + regulariser)"),
    post_steps: int = typer.Option(300, help="post-transfer steps (labelled target)"),
    lam: float = typer.Option(0.1, help="weight lambda of the Lautum term (eq. 2)"),
    mmd_weight: float = typer.Option(1.0, help="weight of the MK-MMD baseline's term"),
    out: Path = typer.Option(None, help="run folder (default runs/lautum-<timestamp>)"),
    resume: bool = typer.Option(False, help="continue the runs in --out"),
) -> None:
    """Pre-transfer training with Lautum regularisation (eq. 2) or MK-MMD, post-transfer
    training on the few target labels (eq. 3) with or without Temporal Ensembling; prints the
    target test accuracy (mean ± std over seeds) and writes one run folder per run plus
    results.json, report.md and plots."""
    import dataclasses

    import torch

    from pytransfer.methods._trainer import init_distributed, resolve_run_dir
    from pytransfer.methods.lautum import (
        METHODS,
        LautumConfig,
        digits_task,
        spec_task,
        split_labels,
    )

    with user_errors():
        if data.strip() == "digits":
            if target is not None:
                raise ValueError("--target needs a source spec in --data (digits holds both)")
            task = digits_task()
        elif target is None:
            raise ValueError(f"--data {data!r} is the source: give the target with --target "
                             "SPEC")
        else:
            task = spec_task(data, target)
        if labels is None:
            cifar = target is not None and target.strip().startswith("cifar100:")
            labels = "100,200,500" if cifar else "50,100,200"
        label_counts = parse_labels(labels, task.num_target)
        if seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {seeds}")
        for name, v in (("--pre-steps", pre_steps), ("--post-steps", post_steps)):
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        for name, v in (("--lam", lam), ("--mmd-weight", mmd_weight)):
            if not v >= 0:
                raise ValueError(f"{name} must be >= 0, got {v}")
        if resume and out is None:
            raise ValueError("--resume needs --out (the run folder to continue)")
        cfg = dataclasses.replace(LautumConfig(), pre_steps=pre_steps, post_steps=post_steps,
                                  lam=lam, mmd_weight=mmd_weight,
                                  eval_every=max(1, post_steps // 3))
        methods = METHODS if method is Method.all else (method.value,)
        for n in label_counts:  # every split must exist before anything trains
            split_labels(task, n, 0)
        rank, world = init_distributed("cpu")
        if cfg.batch < 2 * world:
            raise ValueError(f"batch {cfg.batch} is too small for {world} processes")
        run_dir = resolve_run_dir(out, "lautum", resume)
        records = _train_all(task, label_counts, seeds, methods, cfg, run_dir, rank == 0)
    if rank == 0:
        _report(records, run_dir, cfg, task)
    if world > 1:
        torch.distributed.destroy_process_group()


def _train_all(task, label_counts, seeds, methods, cfg, run_dir, show) -> list[dict]:
    from rich.progress import Progress

    from pytransfer.methods.lautum import run_one

    per_run = cfg.pre_steps + cfg.post_steps
    records = []
    with Progress(disable=not show, transient=True) as bar:
        total = bar.add_task("training", total=len(label_counts) * len(methods) * seeds * per_run)
        for n in label_counts:
            for method in methods:
                for seed in range(seeds):
                    bar.update(total, description=f"{method} labels={n} seed={seed}")
                    done = bar.tasks[0].completed
                    stage = {"offset": 0, "last": 0}

                    def progress(step, steps, _record, done=done, stage=stage):
                        if step < stage["last"]:  # the post-transfer stage started
                            stage["offset"] = cfg.pre_steps
                        stage["last"] = step
                        bar.update(total, completed=done + stage["offset"] + step)

                    sub = run_dir / f"{method}-labels{n}-seed{seed}"
                    records.append(run_one(method, n, seed, task, cfg, sub, resume=True,
                                           progress=progress).record)
                    bar.update(total, completed=done + per_run)
    return records


def _report(records: list[dict], run_dir: Path, cfg, task) -> None:
    from rich.console import Console
    from rich.table import Table

    from pytransfer.methods._trainer import atomic_write_text
    from pytransfer.methods.lautum import table_rows
    from pytransfer.report import markdown_table, plot_accuracy, plot_curves

    console = Console()
    header, rows = table_rows(records)
    seeds = len({r["seed"] for r in records})
    title = f"{task.name}: target test accuracy, mean ± std over {seeds} seeds"
    table = Table(title=title)
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    per_class = [{**r, "labels": r["labels"] // task.num_target} for r in records]
    plot_accuracy(per_class, run_dir, name="lautum_accuracy.png")
    plot_curves(per_class, run_dir, name="lautum_curves.png")
    slim = [{k: v for k, v in r.items() if k != "curve"} for r in records]
    atomic_write_text(run_dir / "results.json",
                      json.dumps({"config": asdict(cfg), "runs": slim}, indent=2) + "\n")
    md = [f"# Lautum regularisation: {title}", "",
          f"Settings: {json.dumps(asdict(cfg))}. Labels are in total (equal per class); the "
          "plots show them per class. The test split is only evaluated.", "",
          markdown_table(header, rows), "",
          "![accuracy against label count](lautum_accuracy.png)", "",
          "![post-transfer training curves](lautum_curves.png)", ""]
    atomic_write_text(run_dir / "report.md", "\n".join(md))
    console.print(f"runs and report: {run_dir}")

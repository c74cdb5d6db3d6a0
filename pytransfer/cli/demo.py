"""``pytransfer demo``: every method on the embedded digits, one report folder."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pytransfer.cli._common import user_errors

console = Console()


def _out_dir(out: Path | None) -> tuple[Path, str | None]:
    """``runs/demo`` or, when that exists, a new ``runs/demo-<timestamp>`` (nothing is
    deleted); an explicit ``--out`` must be new or empty."""
    from pytransfer.methods._trainer import check_run_dir, new_run_dir

    if out is None:
        default = Path("runs") / "demo"
        if default.exists():
            return new_run_dir("runs", "demo"), f"{default} exists: writing a new folder"
        out = default
    check_run_dir(out, resume=False)
    out.mkdir(parents=True, exist_ok=True)
    return out, None


def demo(quick: bool = typer.Option(False, help="shorter runs of every phase"),
         seeds: int = typer.Option(None, help="seeds per JTLN setting (default 5, quick 2)"),
         steps: int = typer.Option(None, help="training steps per JTLN run (default 200, "
                                              "quick 40)"),
         labels: str = typer.Option(None, help="labelled target samples per class (default "
                                               "3,5,10; quick 5)"),
         out: Path = typer.Option(None, help="report folder (default runs/demo, or a new "
                                             "runs/demo-<timestamp> if that exists)")) -> None:
    """Every method on sklearn digits: JTLN and its Table 2 baselines on two tasks (0-4 ->
    5-9, and style siblings), Lautum regularisation and its baselines, H-score layer choice
    and source ranking, free-energy iso-classification. Prints the tables and writes
    report.md and PNG plots."""
    import torch

    from pytransfer.cli.jtln import parse_labels
    from pytransfer.methods.jtln import TABLE2, JTLNConfig

    with user_errors():
        seeds = (2 if quick else 5) if seeds is None else seeds
        steps = (40 if quick else 200) if steps is None else steps
        label_counts = parse_labels(labels or ("5" if quick else "3,5,10"))
        if seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {seeds}")
        if steps < 1:
            raise ValueError(f"--steps must be >= 1, got {steps}")
        if min(label_counts) < 2:
            raise ValueError("--labels must be >= 2 (the MK-MMD class cost needs two samples "
                             "a class)")
        from pytransfer.data.tasks import TASKS, max_labels

        for task in TASKS:
            if max(label_counts) > max_labels(task):
                raise ValueError(f"--labels {max(label_counts)}: task {task!r} has at most "
                                 f"{max_labels(task)} labelled target samples per class")
        folder, note = _out_dir(out)
    if note:
        console.print(note)
    torch.set_num_threads(1)  # small models: intra-op threads only add overhead
    base = JTLNConfig(steps=steps, pretrain_steps=steps)
    timings: dict[str, float] = {}
    columns = (TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        t0 = time.perf_counter()
        n_runs = len(TASKS) * seeds * len(label_counts) * len(TABLE2)
        phase = bar.add_task("JTLN and baselines", total=n_runs * steps)
        records = _jtln_phase(TASKS, label_counts, seeds, base,
                              lambda k: bar.advance(phase, k))
        timings["JTLN and baselines"] = time.perf_counter() - t0
        lautum = _lautum_phase(bar, quick, seeds, timings)
        hscore, fe_records = _other_phases(bar, quick, timings)
    paths = _write_report(folder, records, lautum, hscore, fe_records, base, seeds,
                          label_counts, timings, quick)
    console.print("phases (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    console.print("written: " + ", ".join(str(p) for p in paths))


def _jtln_phase(tasks, label_counts, seeds, base, advance) -> list[dict]:
    from pytransfer.methods.jtln import compare
    from pytransfer.report import accuracy_tables

    records = compare(tasks, label_counts, seeds, base, eval_every=max(1, base.steps // 10),
                      progress=advance)
    for task, (header, rows) in accuracy_tables(records).items():
        table = Table(title=f"JTLN, Table 2 rows, task {task}: target test accuracy "
                            f"(mean ± std over {seeds} seeds)")
        for i, col in enumerate(header):
            table.add_column(col, justify="left" if i == 0 else "right")
        for row in rows:
            table.add_row(*(c.replace("**", "") for c in row))
        console.print(table)
    return records


def _lautum_phase(bar, quick: bool, seeds: int, timings: dict[str, float]):
    """Lautum and its baselines on digits 0-4 -> 5-9 at 50/100/200 target labels: 200
    pre-transfer and 100 post-transfer steps (quick: a quarter)."""
    from dataclasses import replace

    from pytransfer.methods.lautum import METHODS, LautumConfig, digits_task, run_table, table_rows

    cfg = replace(LautumConfig(), pre_steps=200, post_steps=100, eval_every=50)
    if quick:
        cfg = replace(cfg, pre_steps=50, post_steps=25, eval_every=25)
    labels = (50, 100, 200)
    t0 = time.perf_counter()
    phase = bar.add_task("Lautum and baselines", total=len(labels) * len(METHODS) * seeds)
    records = run_table(digits_task(), labels=labels, seeds=seeds, cfg=cfg,
                        progress=lambda _: bar.advance(phase))
    timings["Lautum"] = time.perf_counter() - t0
    header, rows = table_rows(records)
    table = Table(title=f"Lautum regularisation, digits 0-4 -> 5-9: target test accuracy "
                        f"(mean ± std over {seeds} seeds)")
    for i, col in enumerate(header):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    return {"config": {"pre_steps": cfg.pre_steps, "post_steps": cfg.post_steps,
                       "lam": cfg.lam, "labels": list(labels)},
            "header": header, "rows": rows, "records": records}


def _other_phases(bar, quick: bool, timings: dict[str, float]):
    from pytransfer.methods import free_energy, hscore

    t0 = time.perf_counter()
    phase = bar.add_task("H-score layers and sources", total=1)
    hs = hscore.run_demo(console, quick=quick)
    bar.advance(phase)
    timings["H-score"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    phase = bar.add_task("free-energy iso-classification", total=1)
    fe = free_energy.run_demo(console, quick=quick)
    bar.advance(phase)
    timings["free energy"] = time.perf_counter() - t0
    return hs, fe


def _write_report(folder: Path, records, lautum, hscore, fe_records, base, seeds,
                  label_counts, timings, quick) -> list[Path]:
    from dataclasses import asdict

    from pytransfer.methods._trainer import atomic_write_text, environment
    from pytransfer.report import (
        accuracy_tables,
        markdown_table,
        paired_differences,
        plot_accuracy,
        plot_curves,
        plot_rd_plane,
    )

    variants = ("exact", "practical")
    figs = [plot_accuracy(records, folder), plot_curves(records, folder),
            plot_rd_plane(dict(zip(variants, fe_records)), folder)]
    cfg = asdict(base)
    md = ["# pytransfer demo report", "",
          f"{'Quick run. ' if quick else ''}Phases (seconds): "
          + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())
          + f"; total {sum(timings.values()):.0f}.", "",
          "## JTLN and the Table 2 baselines", "",
          "\"Optimal Transport for Deep Joint Transfer Learning\" (Lu, Chen, Saidi). Tasks: "
          "`digits` (sklearn digits 0-4 -> 5-9) and `styles` (every digit split by ink mass: "
          "source = the 10 thin classes, target = the 10 thick sibling classes). Target split "
          "per class: the labelled samples, half of the rest unlabelled (unused by these "
          "rows), half test. Every method: the same MLP (64-64-64, two heads), Adam "
          f"lr {cfg['lr']}, {cfg['steps']} steps, batch {cfg['batch_size']}, seeds "
          f"0..{seeds - 1}. JTLN: lambda_s = lambda_t = 1, alpha = {cfg['alpha']}, "
          f"eps = {cfg['eps']}, grad `{cfg['grad']}`, OT term on the labelled target batch; "
          "class cost from the hidden layer of an MLP pre-trained on the source "
          f"({cfg['pretrain_steps']} steps), MK-MMD ({cfg['kernel_weights']} kernel weights) "
          f"or class-cloud OT (eps {cfg['cost_eps']} x mean squared distance), normalisation "
          f"`{cfg['normalise']}` ((C - min C) / (max C - min C)).", ""]
    for task, (header, rows) in accuracy_tables(records).items():
        md += [f"### task `{task}`: target test accuracy, mean ± std over {seeds} seeds", "",
               markdown_table(header, rows), ""]
        for row in ("JTLN (MK-MMD cost)", "JTLN (OT cost)"):
            ph, pr = paired_differences(records, row, "joint fine-tuning (no OT)")[task]
            md += [markdown_table(ph, pr), ""]
    md += ["![accuracy against label count](jtln_accuracy.png)", "",
           "![training curves](jtln_curves.png)", "",
           "## Lautum regularisation", "",
           "\"Lautum Regularization for Semi-supervised Transfer Learning\" (Jakubovitz, "
           "Rodrigues, Giryes). Digits 0-4 -> 5-9; pre-transfer training on the source "
           f"({lautum['config']['pre_steps']} steps: CE, minus lambda = "
           f"{lautum['config']['lam']} times the Gaussian Lautum information for `Lautum`, "
           "plus MK-MMD for `MK-MMD`), then post-transfer training on the labelled target "
           f"({lautum['config']['post_steps']} steps; Temporal Ensembling's consistency term "
           f"for `Temporal Ensembling`). Target test accuracy, mean ± std over {seeds} seeds:",
           "", markdown_table(lautum["header"], lautum["rows"]), "",
           "## H-score: layer choice and source ranking", "",
           markdown_table(["features", "d", "H-score (Ledoit-Wolf)", "linear transfer accuracy"],
                          [[r["features"], r["d"], f"{r['h_score']:.3f}", f"{r['accuracy']:.3f}"]
                           for r in hscore["layer_rows"]]), "",
           f"Spearman(H-score, accuracy) over layers: {hscore['layers']:.3f}", "",
           markdown_table(["source", "H-score", "transferability", "linear transfer accuracy"],
                          [[r["source"], f"{r['h_score']:.4f}", f"{r['transferability']:.3f}",
                            f"{r['accuracy']:.3f}"] for r in hscore["source_rows"]]), "",
           f"Spearman(H-score, accuracy) over sources: {hscore['sources']:.3f} "
           f"(H_T(f_T,opt) = {hscore['h_opt']:.3f})", "",
           "## Free-energy iso-classification (Gao & Chaudhari, ICML 2020)", ""]
    for variant, recs in zip(variants, fe_records):
        md += [f"### {variant}", "",
               markdown_table(["t", "lambda", "gamma", "R", "D", "C"],
                              [[f"{r['t']:.2f}", f"{r['lam']:.3f}", f"{r['gamma']:.3f}",
                                f"{r['R']:.3f}", f"{r['D']:.3f}", f"{r['C']:.4f}"] for r in recs]),
               ""]
    md += ["![R-D plane](free_energy_rd.png)", ""]
    report = folder / "report.md"
    atomic_write_text(report, "\n".join(md))
    results = folder / "results.json"
    atomic_write_text(results, json.dumps({
        "config": cfg, "seeds": seeds, "labels": label_counts, "timings_s": timings,
        "environment": environment(),
        "jtln": [{k: v for k, v in r.items() if k != "curve"} for r in records],
        "lautum": lautum, "hscore": hscore, "free_energy": fe_records}, indent=1) + "\n")
    return [report, results, *figs]

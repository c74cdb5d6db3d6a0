"""Benchmark report: every case's implementations timed side by side in one run.

    python -m bench.report [OPS...] [--quick] [--out bench/results]

Prints, per case, the time of each implementation and the ratio anchor/subject against the
issue's target; writes ``<out>/report.json`` (with the machine and device named) and
``<out>/report.png``. CPU figures are taken with one thread (``torch.set_num_threads(1)``);
quote ratios from shared machines, absolute times only from a named GPU.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from bench.common import Case, pin_one_thread, time_call

OPS = ("sinkhorn", "mmd", "hscore", "gibbs")
app = typer.Typer(add_completion=False)
console = Console()


def _device() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU {platform.processor() or platform.machine()}, 1 thread"


def run_case(case: Case) -> dict:
    times = {label: time_call(fn, case.rounds) * case.scale.get(label, 1.0)
             for label, fn in case.candidates.items()}
    subject = times[case.subject]
    ratios = {}
    for label, t in times.items():
        if label == case.subject:
            continue
        target = case.targets.get(label)
        ratios[label] = {"ratio": t / subject, "target": target,
                         "met": None if target is None else t / subject >= target}
    metrics = {}
    if case.metrics is not None:
        for name, (value, target, sense) in case.metrics().items():
            met = None if target is None else (
                value >= target if sense == ">=" else value <= target)
            metrics[name] = {"value": value, "target": target, "sense": sense, "met": met}
    return {"op": case.op, "case": case.name, "subject": case.subject, "times_s": times,
            "ratios": ratios, "metrics": metrics}


def _print(rec: dict) -> None:
    table = Table(title=f"{rec['op']}: {rec['case']}  (subject: {rec['subject']})")
    for col in ("implementation", "time (s)", "anchor / subject", "target", "met"):
        table.add_column(col, justify="left" if col == "implementation" else "right")
    for label, t in rec["times_s"].items():
        r = rec["ratios"].get(label)
        if r is None:
            table.add_row(f"[bold]{label}[/bold]", f"{t:.4f}", "1.00", "", "")
        else:
            tgt = "" if r["target"] is None else f">= {r['target']:g}x"
            met = "" if r["met"] is None else ("yes" if r["met"] else "NO")
            table.add_row(label, f"{t:.4f}", f"{r['ratio']:.2f}x", tgt, met)
    for name, m in rec["metrics"].items():
        tgt = "" if m["target"] is None else f"{m['sense']} {m['target']:g}"
        met = "" if m["met"] is None else ("yes" if m["met"] else "NO")
        table.add_row(f"[italic]{name}[/italic]", "", f"{m['value']:.4g}", tgt, met)
    console.print(table)


def _plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(f"{r['op']} | {r['case']}\nvs {label}", v["ratio"], v["target"])
            for r in records for label, v in r["ratios"].items()]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(rows) + 1.5))
    y = range(len(rows))
    ax.barh(list(y), [r[1] for r in rows], color="tab:blue")
    for i, (_, _, target) in enumerate(rows):
        if target is not None:
            ax.plot([target, target], [i - 0.4, i + 0.4], color="tab:red")
    ax.set_yticks(list(y), [r[0] for r in rows], fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("speed-up of the subject over the anchor (red: target)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@app.command()
def main(ops: list[str] = typer.Argument(None, help=f"ops to run (default: all of {OPS})"),
         quick: bool = typer.Option(False, help="smaller workloads (smoke run)"),
         out: Path = typer.Option(Path("bench/results"), help="folder for report.json/.png"),
         ) -> None:
    pin_one_thread()
    records = []
    for op in ops or OPS:
        if op not in OPS:
            raise typer.BadParameter(f"unknown op {op!r}; choose from {OPS}")
        module = importlib.import_module(f"bench.bench_{op}")
        for case in module.cases(quick=quick):
            rec = run_case(case)
            _print(rec)
            records.append(rec)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"device": _device(), "platform": platform.platform(), "quick": quick,
            "threads": 1, "cpu_count": os.cpu_count()}
    (out / "report.json").write_text(json.dumps({"meta": meta, "records": records}, indent=2))
    _plot(records, out / "report.png")
    console.print(f"wrote {out / 'report.json'} and {out / 'report.png'} ({meta['device']})")


if __name__ == "__main__":
    app()

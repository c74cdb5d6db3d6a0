"""``pytransfer bench``: every op's workloads against their anchors, with this machine's
roofline; a table, ``results.json`` and PNGs."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from pytransfer.cli._common import fail, user_errors

console = Console()
if not console.is_terminal:
    console = Console(width=140)  # logs and pipes: room for the table's columns


def _fmt_time(t: float) -> str:
    return f"{t * 1e3:.3g} ms" if t < 1 else f"{t:.3g} s"


def _out_dir(out: Path) -> Path:
    """``out`` when it is new or empty, else a new ``run-<UTC time>`` folder inside it:
    nothing already there is overwritten."""
    if out.exists() and not out.is_dir():
        fail(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        run, k = out / f"run-{stamp}", 1
        while run.exists():
            run, k = out / f"run-{stamp}-{k}", k + 1
        out = run
    out.mkdir(parents=True, exist_ok=True)
    return out


def _table(rec: dict) -> Table:
    """The workload's table; anchors that did not run and the roofline go in its caption."""
    lines = [f"[dim]{label}: not run: {reason}[/dim]"
             for label, reason in {**rec["missing"], **rec["failed"]}.items()]
    rl = rec["roofline"]
    if rl:
        lines.insert(0, f"{rec['subject']}: {100 * rl['fraction']:.1f}% of this machine's "
                        f"{rl['bound']} bound")
    table = Table(title=f"{rec['op']}: {rec['name']} ({rec['detail']})",
                  caption="\n".join(lines) or None, title_justify="left",
                  caption_justify="left")
    for col in ("implementation", "time", "anchor / ours", "target", "peak MiB", "error",
                "2 thr / 1"):
        table.add_column(col, justify="left" if col == "implementation" else "right",
                         no_wrap=col != "implementation")
    for label, t in rec["times_s"].items():
        r = rec["ratios"].get(label, {})
        ratio = "ours" if label == rec["subject"] else (
            f"{r['ratio']:.3g}x" if r.get("ratio") is not None else "")
        target = ""
        if r.get("target") is not None:
            mark = "" if r["met"] is None else (" ok" if r["met"] else " [red]MISSED[/red]")
            target = f">= {r['target']:.3g}x{mark}"
        peak = rec["peak_mib"].get(label)
        err = rec["error"].get(label)
        sp = rec["speedup"].get(label)
        name = f"[bold]{label}[/bold]" if label == rec["subject"] else label
        if label in rec["notes"]:
            name += f" [dim]({rec['notes'][label]})[/dim]"
        table.add_row(name, _fmt_time(t), ratio, target,
                      "" if peak is None else f"{peak:.1f}",
                      "" if err is None else f"{err:.1e}", "" if sp is None else f"{sp:.2f}x")
    for name, m in rec["metrics"].items():
        target = "" if m["target"] is None else f"{m['sense']} {m['target']:g}" + (
            " ok" if m["met"] else " [red]MISSED[/red]")
        table.add_row(f"[italic]{name}[/italic]", "", f"{m['value']:.4g}", target, "", "", "")
    return table


def bench(
    quick: bool = typer.Option(False, "--quick", help="smaller workloads (about 3 minutes)"),
    ops: str = typer.Option("all", "--ops", help="comma-separated ops, or 'all'"),
    threads: int = typer.Option(1, "--threads", help="threads of the timed runs"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
    out: Path = typer.Option(Path("bench-results"), "--out",
                             help="results folder (a new run-* subfolder if not empty)"),
    check: bool = typer.Option(False, "--check", help="exit 1 when a stated target is missed"),
    note: str = typer.Option("", "--note", help="a remark stored in results.json (e.g. noise)"),
) -> None:
    """Time every op against its anchors in one run, with this machine's roofline."""
    import matplotlib

    import pytransfer.bench as pb
    from pytransfer.bench import plots, roofline
    from pytransfer.bench.runner import machine, missed, run_workload
    from pytransfer.bench.timing import threads as thread_count

    names = list(pb.OPS) if ops.strip() == "all" else [o.strip() for o in ops.split(",")
                                                       if o.strip()]
    with user_errors():
        for op in names:
            if op not in pb.OPS:
                raise ValueError(f"--ops: unknown op {op!r}; choose from {', '.join(pb.OPS)}")
    if threads < 1:
        fail(f"--threads must be >= 1, got {threads}")
    if device not in ("cpu", "cuda"):
        fail(f"--device must be cpu or cuda, got {device!r}")
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        fail("--device cuda: CUDA is not available here (torch.cuda.is_available() is False)")
    with user_errors():
        out = _out_dir(out)
    matplotlib.use("Agg")
    size = "quick" if quick else "full"
    sweep = 2 if device == "cpu" and threads == 1 and (os.cpu_count() or 1) >= 2 else None
    meta = machine(device, threads)
    start = time.perf_counter()
    with console.status("measuring the machine's exp, GEMM and memory peaks") as status:
        with thread_count(threads):
            peaks = roofline.measure(device)
        console.print(f"[bold]{meta['device_name']}[/bold], {threads} thread(s): "
                      f"exp {peaks['exp_per_s'] / 1e9:.2f} G/s, GEMM "
                      f"{peaks['flop_per_s'] / 1e9:.1f} GFLOP/s, copy "
                      f"{peaks['bytes_per_s'] / 1e9:.1f} GB/s")
        records, absent = [], {}
        for op in names:
            module = pb.load(op)
            if isinstance(module, str):
                absent[op] = module
                console.print(f"[dim]{op}: {module}[/dim]")
                continue
            try:
                workloads = module.workloads(size, device)
            except (ImportError, RuntimeError) as exc:  # e.g. a kernel missing on this device
                absent[op] = f"cannot set up: {type(exc).__name__}: {exc}".splitlines()[0]
                console.print(f"[dim]{op}: {absent[op]}[/dim]")
                continue
            for w in workloads:
                rec = run_workload(w, device=device, n_threads=threads, peaks=peaks,
                                   sweep=sweep, log=lambda s: status.update(f"timing {s}"))
                console.print(_table(rec))
                records.append(rec)
    misses = missed(records)
    result = {"meta": {**meta, "note": note, "size": size, "seconds": time.perf_counter() - start,
                       "speedup_threads": sweep},
              "peaks": peaks, "absent": absent, "missed": misses,
              "ratios": {op: {r["name"]: {k: v["ratio"] for k, v in r["ratios"].items()}
                              for r in records if r["op"] == op}
                         for op in dict.fromkeys(r["op"] for r in records)},
              "records": records}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    pngs = [*plots.scaling(records, out), plots.roofline(records, peaks, out),
            plots.ratios(records, out)]
    console.print(f"wrote {out / 'results.json'} and {len([p for p in pngs if p])} PNGs "
                  f"({result['meta']['seconds']:.0f} s)")
    if misses:
        console.print(f"[bold]{len(misses)} stated target(s) missed:[/bold]")
        for m in misses:
            console.print(f"  {m}")
        if check:
            raise typer.Exit(1)

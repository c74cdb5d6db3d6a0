"""Run workloads: time, peak memory, error against the float64 reference, ratios against the
anchors, 2-thread speed-up, roofline attainment; one JSON-ready record per workload."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import torch

from pytransfer.bench.roofline import attainment
from pytransfer.bench.timing import call_with_peak, threads, time_alternated, time_call
from pytransfer.bench.workload import Work, Workload, relative_error


def _met(value: float, target: float | None, sense: str = ">=") -> bool | None:
    if target is None:
        return None
    return value >= target if sense == ">=" else value <= target


def _rounds(rounds: int, first: float) -> int:
    """Timed calls after a first call of ``first`` seconds: ten times more below 20 ms (the
    median of millisecond calls on a shared machine needs them), one from 0.2 s."""
    return rounds * 10 if first < 0.02 else (rounds if first < 0.2 else 1)


def run_workload(w: Workload, *, device: str, n_threads: int, peaks: dict[str, float] | None,
                 sweep: int | None = None, log: Callable[[str], None] = lambda _: None) -> dict:
    """Every runnable implementation of ``w`` at ``n_threads``; this package's kernels again at
    ``sweep`` threads (the speed-up column) when given."""
    rec: dict = {"op": w.op, "family": w.family, "size": w.size, "size_name": w.size_name,
                 "name": w.name, "detail": w.detail, "subject": w.subject,
                 "missing": w.missing(), "times_s": {}, "peak_mib": {}, "error": {},
                 "speedup": {}, "ratios": {}, "metrics": {}, "anchors": [],
                 "roofline": None, "failed": {}, "notes": {}}
    ref = w.reference() if w.reference is not None else None
    rounds = w.rounds
    impls = w.runnable()

    def fail(label: str, exc: Exception) -> None:
        rec["failed"][label] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"

    with threads(n_threads):
        # each implementation's first calls (warm-up, output, peak memory), then the timed
        # calls of all of them in alternated rounds
        plan, slow = {}, {}
        for label, impl in impls.items():
            log(f"{w.op}: {w.name}: {label}")
            try:
                t0 = time.perf_counter()
                out, peak = call_with_peak(impl.fn, device)  # also the warm-up call
                first = time.perf_counter() - t0
                if impl.anchor and first >= 2.0:  # a slow anchor: its first call is its time
                    slow[label] = first
                else:  # peak memory again without one-time initialisation
                    _, peak = call_with_peak(impl.fn, device)
                    plan[label] = (impl.fn, _rounds(rounds, first))
            except (RuntimeError, MemoryError, ValueError) as exc:
                fail(label, exc)
                continue
            rec["peak_mib"][label] = peak
            if ref is not None and impl.compare and out is not None:
                rec["error"][label] = relative_error(out, ref, impl.take)
        times, failed = time_alternated(plan, device)
        for label, exc in failed.items():
            fail(label, exc)
            del rec["peak_mib"][label]
            rec["error"].pop(label, None)
        times.update(slow)
        for label, impl in impls.items():
            if label not in times:
                continue
            rec["times_s"][label] = times[label] * impl.scale
            if impl.scale != 1:
                rec["notes"][label] = f"1/{impl.scale:g} timed, scaled"
            if impl.anchor:
                rec["anchors"].append(label)
        if w.metrics is not None:
            for name, (value, target, sense) in w.metrics().items():
                if value is None:  # not measurable here (e.g. no /proc)
                    continue
                rec["metrics"][name] = {"value": value, "target": target, "sense": sense,
                                        "met": _met(value, target, sense)}
    if sweep is not None and sweep != n_threads:
        with threads(sweep):
            for label, impl in w.runnable().items():
                if impl.anchor or label not in rec["times_s"]:
                    continue
                t = time_call(impl.fn, 1, device)  # the warm-up call
                one = rec["times_s"][label] / impl.scale
                if t < 1.0 and t < 3 * one:  # (a much slower warm-up is its own answer)
                    t = time_call(impl.fn, _rounds(rounds, t), device)
                rec["speedup"][label] = one / t
    subject = rec["times_s"].get(w.subject)
    for label in rec["anchors"]:
        if subject is not None:
            rec["ratios"][label] = {"ratio": rec["times_s"][label] / subject, "target": None,
                                    "met": None}
    for tgt in w.targets:
        sub = rec["times_s"].get(tgt.subject or w.subject)
        key = tgt.anchor if tgt.subject is None else f"{tgt.anchor} / {tgt.subject}"
        entry = rec["ratios"].setdefault(key, {"ratio": None, "target": None, "met": None})
        entry["target"] = tgt.ratio
        if sub is not None and tgt.anchor in rec["times_s"]:
            entry["ratio"] = rec["times_s"][tgt.anchor] / sub
            entry["met"] = entry["ratio"] >= tgt.ratio
    work = w.work() if callable(w.work) else w.work
    if isinstance(work, Work) and subject is not None and peaks is not None:
        rec["roofline"] = {"work": vars(work), **attainment(work, subject, peaks)}
    return rec


def missed(records: list[dict]) -> list[str]:
    """Every stated target the records miss (a target whose anchor could not run is not
    counted as missed)."""
    out = []
    for r in records:
        for label, v in r["ratios"].items():
            if v["met"] is False:
                out.append(f"{r['op']}: {r['name']}: vs {label}: {v['ratio']:.2f}x < "
                           f"{v['target']:g}x")
        for name, m in r["metrics"].items():
            if m["met"] is False:
                out.append(f"{r['op']}: {r['name']}: {name} = {m['value']:.4g}, target "
                           f"{m['sense']} {m['target']:g}")
    return out


def machine(device: str, n_threads: int) -> dict:
    """The machine, CPU model, thread count, versions, device name and git commit."""
    import platform
    import subprocess

    import pytransfer

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(pytransfer.__file__), timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10,
                               cwd=os.path.dirname(pytransfer.__file__))
        git = (commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")) or None
    except (OSError, subprocess.SubprocessError):
        git = None
    return {"machine": platform.node(), "platform": platform.platform(), "cpu": cpu,
            "cpu_count": os.cpu_count(), "threads": n_threads, "device": device,
            "device_name": torch.cuda.get_device_name() if device == "cuda" else cpu,
            "torch": torch.__version__, "triton": triton_version,
            "pytransfer": pytransfer.__version__, "git_commit": git}

"""``pytransfer bench``: every hot path and loss timed against its anchors in one run, with
this machine's roofline (see the README's Benchmarks section).

Each op is a module ``pytransfer.bench.<op>`` named in :data:`OPS` and exposing

    def workloads(size: str, device: str) -> list[Workload]

with ``size`` one of ``"tiny"`` (the CI accuracy test: runs in well under a second, no
timing), ``"quick"`` (``--quick``) or ``"full"``, and ``device`` ``"cpu"`` or ``"cuda"``.
A :class:`~pytransfer.bench.workload.Workload` holds one problem:

- ``family``/``size``/``size_name``: the series and its problem size (several sizes of one
  family give the log-log time-against-size plot);
- ``impls``: label -> :class:`~pytransfer.bench.workload.Impl` (a zero-argument callable,
  timed as is, returning the output or None; ``anchor=True`` for POT, GeomLoss, plain torch
  or this package's reference backend; ``scale``/``take`` for a slow loop timed on a
  subset), or a string giving why an anchor cannot run here (not installed, GPU-only, too
  much memory) — it becomes a line of the report, never an exception;
- ``subject``: the label the ratios are reported for; ``targets``: stated targets
  ``Target(anchor, ratio)`` meaning anchor time / subject time >= ratio (``--check`` exits 1
  when one is missed);
- ``reference``: the float64 output (the error column; the CI test checks every comparable
  implementation against it within its ``Impl.tol``);
- ``work``: :class:`~pytransfer.bench.workload.Work` (flops, bytes, exps) of the subject, or a
  callable returning it, for the roofline; ``metrics``: other figures with their targets.

To add an op: write ``pytransfer/bench/<op>.py`` with ``workloads`` (import optional anchors
inside it and turn an ImportError into a reason string), add the name to :data:`OPS` if it is
new, and add the module to ``setup.py``'s package list only if it is a sub-package. Plain
workload functions (inputs -> callables) are wrapped by building one ``Workload`` per size.
A name in :data:`OPS` whose module does not exist yet is reported as absent.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from pytransfer.bench.workload import Impl, Target, Work, Workload

#: every op the command knows, in report order
OPS = ("sinkhorn", "pointcloud", "mmd", "hscore", "gibbs", "lautum", "losses")


def load(op: str) -> ModuleType | str:
    """The workload module of ``op``, or why there is none."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; choose from {', '.join(OPS)}")
    name = f"pytransfer.bench.{op}"
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        if getattr(exc, "name", None) == name:
            return f"registered, but no workload module {name} yet"
        return f"cannot import {name}: {exc}"


__all__ = ["OPS", "Impl", "Target", "Work", "Workload", "load"]

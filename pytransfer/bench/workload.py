"""What an op module hands the harness: workloads, their implementations and anchors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

SIZES = ("tiny", "quick", "full")  # tiny: the CI accuracy test; quick: --quick; full


@dataclass
class Impl:
    """One implementation of a workload.

    fn: zero-argument callable, timed as is; returns the workload's output (compared with the
        float64 reference) or None.
    anchor: an alternative a user would pick instead (POT, GeomLoss, plain torch, this
        package's reference backend); False for this package's kernels.
    scale: the callable runs ``1 / scale`` of the workload (a slow per-problem loop timed on
        a subset); its time is multiplied by ``scale``.
    take: its output covers only the first ``take`` entries of the reference's (flattened).
    compare: False when the output is not the reference's quantity (another estimator).
    tol: relative error allowed against the reference (the CI accuracy test).
    """

    fn: Callable[[], object]
    anchor: bool = False
    scale: float = 1.0
    take: int | None = None
    compare: bool = True
    tol: float = 1e-4


@dataclass
class Target:
    """A stated target: ``anchor time / subject time >= ratio`` (ratio < 1: 'within 1/ratio
    of the anchor')."""

    anchor: str
    ratio: float
    subject: str | None = None  # default: the workload's subject


@dataclass
class Work:
    """Work of the subject's kernel for the roofline: floating-point operations, bytes that
    must move through memory at least once, and exponentials."""

    flops: float = 0.0
    bytes: float = 0.0
    exps: float = 0.0


@dataclass
class Workload:
    """One problem, every implementation of it, and what is claimed about them.

    family: the series it belongs to (one line per implementation in the scaling plot);
    size: its problem size along that series (x axis), named by ``size_name``.
    impls: label -> :class:`Impl`, or a string: why that anchor cannot run here.
    subject: the label whose ratios against the anchors are reported.
    reference: float64 value of the output (the error column), or None.
    metrics: other figures, name -> (value, target or None, ">=" | "<=").
    """

    op: str
    family: str
    size: float
    size_name: str
    detail: str
    subject: str
    impls: dict[str, Impl | str]
    reference: Callable[[], torch.Tensor | float] | None = None
    targets: list[Target] = field(default_factory=list)
    work: Work | Callable[[], Work] | None = None
    metrics: Callable[[], dict[str, tuple[float, float | None, str]]] | None = None
    rounds: int = 3

    @property
    def name(self) -> str:
        return f"{self.family}, {self.size_name}={self.size:g}"

    def runnable(self) -> dict[str, Impl]:
        return {k: v for k, v in self.impls.items() if isinstance(v, Impl)}

    def missing(self) -> dict[str, str]:
        return {k: v for k, v in self.impls.items() if isinstance(v, str)}


def relative_error(out: object, ref: torch.Tensor, take: int | None = None) -> float:
    """max |out - ref| / max |ref| over the (first ``take``) flattened entries, in float64."""
    ref = torch.as_tensor(ref, dtype=torch.float64).detach().cpu().flatten()
    if take is not None:
        ref = ref[:take]
    if isinstance(out, (list, tuple)):
        out = torch.stack([torch.as_tensor(o, dtype=torch.float64).detach().cpu().flatten()
                           for o in out]).flatten()
    out = torch.as_tensor(out).detach().cpu().to(torch.float64).flatten()
    if out.shape != ref.shape:
        raise ValueError(f"output has {out.numel()} entries, the reference {ref.numel()}")
    return float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-300))


def fwd_bwd(fn: Callable, args: tuple, grad: tuple[int, ...] = (0,)) -> Callable:
    """A zero-argument callable timing ``fn(*args)`` and its backward: the arguments at the
    ``grad`` positions are fresh leaves that require grad on every call; it returns
    (value, *their gradients)."""
    def call():
        inputs = [a.detach().requires_grad_(True) if i in grad else a
                  for i, a in enumerate(args)]
        value = fn(*inputs)
        value.backward()
        return (value.detach(), *(inputs[i].grad for i in grad))
    return call

"""One registry that chooses the implementation of every hot-path op.

Each op registers its implementations under the backend names of :data:`BACKENDS`. An
implementation declares the device types it runs on, a probe that says why it is unavailable
(extension not built, triton missing, ...) and optionally a ``supports(**inputs)`` predicate
that says why it cannot take particular inputs (too large for one tile, ...). ``"auto"``
takes the first implementation, in the priority order of :data:`AUTO_ORDER` for the tensors'
device, that is available and supports the inputs; it falls back to ``"reference"`` with one
warning when the compiled kernel is missing. An explicit backend that cannot run is an error,
never a silent fallback. ``PYTRANSFER_BACKEND`` sets the backend used for ``backend="auto"``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

BACKENDS = ("auto", "reference", "cpu", "triton", "cuda")
REGISTRABLE = ("reference", "cpu", "triton")
AUTO_ORDER = {"cuda": ("triton", "reference"), "cpu": ("cpu", "reference")}
#: why no op has a ``"cuda"`` implementation: the name is accepted so that asking for it gets
#: this answer rather than an unknown-name error
NO_CUDA = ("the CUDA C++ kernels (csrc/cuda) are compiled to cubin as a check only "
           "(make cuda-check), not linked; use backend='triton' on CUDA tensors")


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run here (not built, not installed, wrong device)."""


@dataclass
class Impl:
    fn: Callable[..., Any]
    device_types: tuple[str, ...]
    unavailable: Callable[[], str | None] = lambda: None
    supports: Callable[..., str | None] = lambda **_: None


@dataclass
class _Op:
    impls: dict[str, Impl] = field(default_factory=dict)


_REGISTRY: dict[str, _Op] = {}
_warned: set[str] = set()


def register(
    op: str,
    backend: str,
    *,
    device_types: tuple[str, ...],
    unavailable: Callable[[], str | None] | None = None,
    supports: Callable[..., str | None] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering ``fn`` as ``backend``'s implementation of ``op``."""
    if backend not in REGISTRABLE:
        raise ValueError(f"backend must be one of {REGISTRABLE}, got {backend!r}")

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        impl = Impl(fn, device_types)
        if unavailable is not None:
            impl.unavailable = unavailable
        if supports is not None:
            impl.supports = supports
        _REGISTRY.setdefault(op, _Op()).impls[backend] = impl
        return fn

    return deco


def register_backends(
    op: str,
    *,
    reference: Callable[..., Any],
    cpu: Callable[..., Any] | None = None,
    triton: Callable[..., Any] | None = None,
    cpu_unavailable: Callable[[], str | None] | None = None,
    supports: dict[str, Callable[..., str | None]] | None = None,
) -> None:
    """Register the usual set: reference (any device), cpu (compiled, CPU tensors; needs
    pytransfer._C unless ``cpu_unavailable`` says otherwise) and triton (CUDA tensors).
    ``supports`` maps backend names to input predicates."""
    from pytransfer import _ext

    supports = supports or {}
    table = {
        "reference": (reference, ("cpu", "cuda"), None),
        "cpu": (cpu, ("cpu",), cpu_unavailable or _ext.unavailable),
        "triton": (triton, ("cuda",), _ext.triton_unavailable),
    }
    for name, (fn, devices, unavailable) in table.items():
        if fn is not None:
            register(op, name, device_types=devices, unavailable=unavailable,
                     supports=supports.get(name))(fn)


def check_backend_name(backend: object) -> str:
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def _device_ok(impl: Impl, name: str, device_type: str) -> str | None:
    if device_type in impl.device_types:
        return None
    if name == "triton" and device_type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        return None  # the Triton interpreter runs kernels on CPU tensors (tests)
    return f"it runs on {'/'.join(impl.device_types)} tensors, not {device_type}"


def resolve(op: str, backend: str, device_type: str, **inputs: Any) -> tuple[str, Callable]:
    """Return ``(name, fn)`` of the implementation of ``op`` to run on ``inputs``."""
    check_backend_name(backend)
    if backend == "auto":
        backend = check_backend_name(os.environ.get("PYTRANSFER_BACKEND", "auto"))
    impls = _REGISTRY[op].impls
    if backend != "auto":
        impl = impls.get(backend)
        if impl is None:
            why = f": {NO_CUDA}" if backend == "cuda" else ""
            raise BackendUnavailableError(f"{op}: no {backend!r} implementation exists{why}")
        why = (impl.unavailable() or _device_ok(impl, backend, device_type)
               or impl.supports(**inputs))
        if why:
            raise BackendUnavailableError(f"{op}: backend {backend!r} cannot run: {why}")
        return backend, impl.fn
    skipped = []
    for name in AUTO_ORDER.get(device_type, ("reference",)):
        impl = impls.get(name)
        if impl is None:
            continue
        why = impl.unavailable() or _device_ok(impl, name, device_type) or impl.supports(**inputs)
        if why is None:
            if skipped and name == "reference" and op not in _warned:
                _warned.add(op)
                warnings.warn(
                    f"{op}: using the slow reference backend ({'; '.join(skipped)})",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return name, impl.fn
        skipped.append(f"{name}: {why}")
    raise BackendUnavailableError(f"{op}: no backend can run on {device_type}: {skipped}")


def backends() -> dict[str, dict[str, str]]:
    """For every op, each backend and either ``"available"`` or why it is not."""
    out = {}
    for op, entry in sorted(_REGISTRY.items()):
        out[op] = {name: impl.unavailable() or "available" for name, impl in entry.impls.items()}
    return out

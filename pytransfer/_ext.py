"""The compiled extension ``pytransfer._C``, or the reason it is not there, and the one way to
call it (:func:`call`).

The extension takes tensors as raw data pointers plus sizes (it links no libtorch), so a wrong
dtype, shape, device or layout is memory corruption, not an error. :func:`call` is the boundary:
every tensor argument is declared with :func:`src` (read) or :func:`dst` (written) and the shape
the kernel will assume; the call checks each against the declaration, keeps the contiguous
copies of inputs alive until the kernel returns, names the dtype and passes the thread count.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from pytransfer import _checks

try:
    from pytransfer import _C  # type: ignore[attr-defined]

    IMPORT_ERROR: str | None = None
except ImportError as exc:  # not built: no compiler at install time, or PYTRANSFER_NO_EXT=1
    _C = None
    IMPORT_ERROR = f"pytransfer._C is not built ({exc}); reinstall with a C++ compiler"

#: the dtypes the C++ kernels are instantiated for, by the name they take
DTYPE_NAMES = {torch.float32: "float32", torch.float64: "float64"}


def unavailable() -> str | None:
    return IMPORT_ERROR


def triton_unavailable() -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return f"triton is not installed ({exc})"
    return None


class Buffer(NamedTuple):
    """A tensor argument of :func:`call`: the shape (and dtype, default the call's) the kernel
    assumes, and whether the kernel writes it."""

    tensor: torch.Tensor | None
    shape: tuple[int, ...]
    dtype: torch.dtype | None
    writes: bool


def src(x: torch.Tensor | None, *shape: int, dtype: torch.dtype | None = None) -> Buffer:
    """A buffer the kernel reads (copied to contiguous memory when needed). ``None`` passes a
    null pointer (an absent optional input)."""
    return Buffer(x, shape, dtype, False)


def dst(x: torch.Tensor, *shape: int, dtype: torch.dtype | None = None) -> Buffer:
    """A buffer the kernel writes in place: it must already be contiguous."""
    return Buffer(x, shape, dtype, True)


def call(name: str, dtype: torch.dtype, *args: Any, threads: bool = True) -> Any:
    """``pytransfer._C.<name>(dtype name, *args, [torch.get_num_threads()])`` with every
    :class:`Buffer` argument checked and passed as a data pointer; other arguments as given."""
    if _C is None:
        raise RuntimeError(IMPORT_ERROR)
    if dtype not in DTYPE_NAMES:
        raise TypeError(f"{name}: the C++ kernels take float32 or float64, got {dtype}")
    alive, flat = [], []  # alive: the contiguous copies, held until the kernel has returned
    for i, arg in enumerate(args):
        if type(arg) is not Buffer:
            if isinstance(arg, torch.Tensor):
                raise TypeError(f"{name}: argument {i} is a bare tensor; declare it with src/dst")
            flat.append(arg)
            continue
        x = arg.tensor
        if x is None:
            if arg.writes:
                raise ValueError(f"{name}: output argument {i} is None")
            flat.append(0)
            continue
        if not x.is_cpu:
            raise ValueError(f"{name}: argument {i} is on {x.device}; the C++ kernels take CPU "
                             f"tensors")
        if x.dtype is not (arg.dtype or dtype):
            raise TypeError(f"{name}: argument {i} has dtype {x.dtype}, the kernel reads "
                            f"{arg.dtype or dtype}")
        if x.shape != arg.shape:
            raise ValueError(f"{name}: argument {i} has shape {tuple(x.shape)}, the kernel "
                             f"assumes {tuple(arg.shape)}")
        if not x.is_contiguous():
            if arg.writes:
                raise ValueError(f"{name}: output argument {i} is not contiguous")
            # e.g. an expanded view: its copy may not fit
            _checks.fits(f"{name}: a contiguous copy of argument {i} {tuple(arg.shape)}",
                         x.numel() * x.element_size(), x.device)
            x = x.contiguous()
            alive.append(x)
        flat.append(x.data_ptr())
    if threads:
        flat.append(torch.get_num_threads())
    out = getattr(_C, name)(DTYPE_NAMES[dtype], *flat)
    del alive
    return out

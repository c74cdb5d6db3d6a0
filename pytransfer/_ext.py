"""The compiled extension ``pytransfer._C``, or the reason it is not there, and the one way to
call it (:func:`call`).

The extension takes tensors as raw data pointers plus sizes (it links no libtorch), so a wrong
dtype, shape, device or layout is memory corruption, not an error. :func:`call` (and
:func:`bound`, the same call prepared but not made) is the boundary: every tensor argument is
declared with :func:`src` (read), :func:`dst` (written), :func:`out` (a fresh output allocated
here from its declaration) or :class:`Outputs` (several fresh outputs in one allocation) and
the shape the kernel will assume; the call checks each against the declaration, keeps the
contiguous copies of inputs alive until the kernel returns, names the dtype and passes the
thread count.

Cost (issue 13, fixed per-call overhead): the common case is one combined comparison per
buffer (device, dtype, contiguity, shape as one tuple compare); only a failing buffer takes
the slow path that says what is wrong. :func:`out` buffers and :class:`Outputs` need no
check: their memory was allocated here from the very shapes and dtypes the kernel is told.
"""

from __future__ import annotations

import functools
from typing import Any

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


class Buffer(tuple):
    """A tensor argument of :func:`call`: (tensor, shape the kernel assumes, dtype or None
    for the call's, whether the kernel writes it, whether :func:`out` allocated it)."""

    __slots__ = ()

    @property
    def tensor(self) -> torch.Tensor | None:
        return self[0]


def src(x: torch.Tensor | None, *shape: int, dtype: torch.dtype | None = None) -> Buffer:
    """A buffer the kernel reads (copied to contiguous memory when needed). ``None`` passes a
    null pointer (an absent optional input)."""
    return Buffer((x, shape, dtype, False, False))


def dst(x: torch.Tensor, *shape: int, dtype: torch.dtype | None = None) -> Buffer:
    """A buffer the kernel writes in place: it must already be contiguous."""
    return Buffer((x, shape, dtype, True, False))


#: an empty CPU tensor per dtype: ``new_empty`` on it is the cheapest allocation call
_PROTOTYPES = {d: torch.empty(0, dtype=d) for d in (torch.float32, torch.float64, torch.int64,
                                                     torch.int32, torch.uint8, torch.bool)}


def out(dtype: torch.dtype, size: int, *sizes: int) -> Buffer:
    """A fresh output of shape (size, *sizes) and ``dtype`` (CPU, contiguous), allocated here,
    so :func:`call` trusts it without checks; the kernel's result is ``.tensor``."""
    return Buffer((_PROTOTYPES[dtype].new_empty(size, *sizes), (size, *sizes), dtype, True,
                   True))


def zeros(dtype: torch.dtype, size: int, *sizes: int) -> Buffer:
    """:func:`out` filled with zeros: a fresh accumulator the kernel adds into."""
    return Buffer((_PROTOTYPES[dtype].new_zeros(size, *sizes), (size, *sizes), dtype, True,
                   True))


class Layout:
    """Where the outputs of one kernel call lie in one allocation (:class:`Outputs`), of the
    first slot's dtype: slots of (dtype, shape), each at a 64-byte boundary (as aligned as a
    fresh tensor)."""

    __slots__ = ("dtype", "numel", "offsets", "slots")

    def __init__(self, *slots: tuple[torch.dtype, tuple[int, ...]]) -> None:
        self.dtype = slots[0][0]
        #: per slot: (dtype, shape, strides, offset in its dtype's entries)
        self.slots, offsets, end = [], [], 0
        for dtype, shape in slots:
            itemsize = _PROTOTYPES[dtype].element_size()
            strides, step = [], 1
            for size in reversed(shape):
                strides.append(step)
                step *= size
            self.slots.append((dtype, shape, tuple(reversed(strides)), end // itemsize))
            offsets.append(end)
            end += -(-step * itemsize // 64) * 64
        self.slots, self.offsets = tuple(self.slots), tuple(offsets)  # offsets in bytes
        self.numel = max(end, 64) // _PROTOTYPES[self.dtype].element_size()


class Outputs:
    """Fresh outputs of one kernel call in one allocation (an allocation costs about 1 us,
    issue 13), laid out by a :class:`Layout`: passed to :func:`call` as one argument (a data
    pointer per slot, in order) that needs no check, read back (:meth:`tensor`) for only the
    slots a caller uses."""

    __slots__ = ("_views", "flat", "layout")

    def __init__(self, layout: Layout) -> None:
        self.flat = _PROTOTYPES[layout.dtype].new_empty(layout.numel)
        self.layout = layout
        self._views: dict[int, torch.Tensor] = {}

    def tensor(self, i: int) -> torch.Tensor:
        """Slot ``i`` as a contiguous tensor: a view (it keeps the allocation alive), or a copy
        for a slot of another dtype than the allocation's (a view would show one storage as
        two dtypes, which torch.save refuses)."""
        dtype, shape, strides, offset = self.layout.slots[i]
        flat = self.flat
        if dtype is flat.dtype:
            return flat.as_strided(shape, strides, offset)
        return flat.view(dtype).as_strided(shape, strides, offset).clone()

    def view(self, i: int) -> torch.Tensor:
        """Slot ``i`` (of the allocation's dtype) as a view made once per allocation and kept:
        for the caller's own reads only, never handed out (a view someone else holds may have
        its shape or strides changed in place). A cold view costs about as much as a small
        torch op (issue 13); an allocation written over call after call keeps its views."""
        view = self._views.get(i)
        if view is None:
            dtype, shape, strides, offset = self.layout.slots[i]
            if dtype is not self.flat.dtype:
                raise TypeError(f"slot {i} is {dtype}, the allocation {self.flat.dtype}")
            view = self._views[i] = self.flat.as_strided(shape, strides, offset)
        return view

    def all(self, i: int) -> bool:
        """Whether every entry of slot ``i`` is nonzero (read in place: no copy)."""
        dtype, shape, strides, offset = self.layout.slots[i]
        return bool(self.flat.view(dtype).as_strided(shape, strides, offset).all())


#: argument types passed through as they are (anything else is checked for a bare tensor)
_SCALARS = frozenset((int, float, bool, str))


def _bad(name: str, i: int, arg: Buffer, dtype: torch.dtype) -> Exception | None:
    """What is wrong with buffer ``i`` (the slow path of :func:`call`), or None if nothing."""
    x, shape, want, writes, _ = arg
    want = want or dtype
    if x is None:
        return ValueError(f"{name}: output argument {i} is None") if writes else None
    if not x.is_cpu:
        return ValueError(f"{name}: argument {i} is on {x.device}; the C++ kernels take CPU "
                          f"tensors")
    if x.dtype is not want:
        return TypeError(f"{name}: argument {i} has dtype {x.dtype}, the kernel reads {want}")
    if x.shape != shape:
        return ValueError(f"{name}: argument {i} has shape {tuple(x.shape)}, the kernel "
                          f"assumes {shape}")
    if writes and not x.is_contiguous():
        return ValueError(f"{name}: output argument {i} is not contiguous")
    return None


def call(name: str, dtype: torch.dtype, *args: Any, threads: bool | int = True) -> Any:
    """``pytransfer._C.<name>(dtype name, *args, [torch.get_num_threads()])`` with every
    :class:`Buffer` argument checked and passed as a data pointer; other arguments as given.
    ``threads``: True passes the thread count, an int a smaller one (the caller's work items,
    so no thread waits at the kernel's barriers with nothing to do), False none."""
    kernel, dname, flat, alive = _arguments(name, dtype, args, threads)
    result = kernel(dname, *flat)
    del alive
    return result


def bound(name: str, dtype: torch.dtype, *args: Any,
          threads: bool | int = True) -> functools.partial:
    """:func:`call`'s kernel with its checked arguments bound, not called: calling it runs the
    C++ kernel alone (``pytransfer.bench`` times the Python around a call against it). It
    keeps the contiguous copies it made; the caller keeps the buffers it passed alive."""
    kernel, dname, flat, alive = _arguments(name, dtype, args, threads)
    run = functools.partial(kernel, dname, *flat)
    run.copies = alive
    return run


def _arguments(name: str, dtype: torch.dtype, args: tuple,
               threads: bool | int) -> tuple[Any, str, list, list]:
    """(the kernel, the dtype's name, the flat arguments, the contiguous copies they point
    into, which must stay alive until the kernel has returned)."""
    if _C is None:
        raise RuntimeError(IMPORT_ERROR)
    dname = DTYPE_NAMES.get(dtype)
    if dname is None:
        raise TypeError(f"{name}: the C++ kernels take float32 or float64, got {dtype}")
    alive, flat = [], []
    for i, arg in enumerate(args):
        kind = type(arg)
        if kind in _SCALARS:
            flat.append(arg)
            continue
        if kind is not Buffer:
            if kind is Outputs:  # allocated here from its layout: one pointer per slot
                base = arg.flat.data_ptr()
                flat.extend([base + offset for offset in arg.layout.offsets])
                continue
            if isinstance(arg, torch.Tensor):
                raise TypeError(f"{name}: argument {i} is a bare tensor; declare it with src/dst")
            flat.append(arg)
            continue
        x, shape, want, writes, fresh = arg
        if fresh:  # allocated by ``out`` from this very declaration
            flat.append(x.data_ptr())
        elif (x is not None and x.is_cpu and x.dtype is (want or dtype) and x.is_contiguous()
                and x.shape == shape):
            flat.append(x.data_ptr())
        elif x is None and not writes:
            flat.append(0)  # an absent optional input: a null pointer
        else:
            error = _bad(name, i, arg, dtype)
            if error is not None:
                raise error
            # a readable input in the declared shape, not contiguous (e.g. an expanded view):
            # its copy may not fit
            _checks.fits(f"{name}: a contiguous copy of argument {i} {shape}",
                         x.numel() * x.element_size(), x.device)
            x = x.contiguous()
            alive.append(x)
            flat.append(x.data_ptr())
    if threads is True:
        flat.append(torch.get_num_threads())
    elif threads:
        flat.append(threads)
    return getattr(_C, name), dname, flat, alive

"""The compiled extension ``pytransfer._C``, or the reason it is not there."""

from __future__ import annotations

try:
    from pytransfer import _C  # type: ignore[attr-defined]

    IMPORT_ERROR: str | None = None
except ImportError as exc:  # not built: no compiler at install time, or PYTRANSFER_NO_EXT=1
    _C = None
    IMPORT_ERROR = f"pytransfer._C is not built ({exc}); reinstall with a C++ compiler"


def unavailable() -> str | None:
    return IMPORT_ERROR


def cuda_unavailable() -> str | None:
    if _C is None:
        return IMPORT_ERROR
    if not hasattr(_C, "sinkhorn_log_cuda"):
        return ("pytransfer._C has no CUDA kernels in this build (csrc/cuda/*.cu are compiled "
                "to cubin as a check; linking them needs a CUDA torch)")
    return None


def triton_unavailable() -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return f"triton is not installed ({exc})"
    return None

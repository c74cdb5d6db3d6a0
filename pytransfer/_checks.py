"""Input validation shared by every op: clear errors naming the argument and the problem.

Shape, dtype and device checks never touch tensor values. Value checks (NaN/Inf, signs,
mass) need a host synchronisation; ops run them only when ``check_inputs=True``.
"""

from __future__ import annotations

import math
import os

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def tensor(name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def floating(name: str, x: torch.Tensor) -> torch.Tensor:
    tensor(name, x)
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have a floating dtype (float32/float64), got {x.dtype}")
    return x


def ndim(name: str, x: torch.Tensor, allowed: tuple[int, ...]) -> None:
    if x.dim() not in allowed:
        want = " or ".join(f"{d}-D" for d in allowed)
        raise ValueError(f"{name} must be {want}, got shape {tuple(x.shape)}")


def same_device(**tensors: torch.Tensor) -> torch.device:
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        raise ValueError(f"all inputs must be on one device, got {devices}")
    return next(iter(devices.values()))


def same_dtype(**tensors: torch.Tensor) -> torch.dtype:
    dtypes = {name: t.dtype for name, t in tensors.items()}
    if len(set(dtypes.values())) > 1:
        raise TypeError(f"all inputs must share one float dtype, got {dtypes}")
    return next(iter(dtypes.values()))


def finite(name: str, x: torch.Tensor) -> None:
    # One summing pass: a finite sum proves every entry finite; only a non-finite sum (NaN/Inf,
    # or overflow) pays for the element-wise check.
    x = x.detach()
    if not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or Inf")


def nonnegative(name: str, x: torch.Tensor) -> None:
    if bool((x < 0).any()):
        raise ValueError(f"{name} has negative entries (weights must be >= 0)")


def positive_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return float(value)


def nonneg_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return float(value)


def positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def choice(name: str, value: object, options: tuple[str, ...]) -> str:
    if value not in options:
        raise ValueError(f"{name} must be one of {options}, got {value!r}")
    return value  # type: ignore[return-value]


def histograms(a: object, b: object, names: tuple[str, str], check_inputs: bool) -> None:
    """Two (B, n), (B, m) batches of weights with one mass per problem: types, shapes, values
    (finite, >= 0, positive mass, equal masses to ``max(1e-5, 4 eps_dtype)``) under the
    caller's argument names."""
    na, nb = names
    floating(na, tensor(na, a))
    floating(nb, tensor(nb, b))
    ndim(na, a, (2,))
    ndim(nb, b, (2,))
    same_device(**{na: a, nb: b})
    same_dtype(**{na: a, nb: b})
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{na} and {nb} must have the same batch size, got {a.shape[0]} and "
                         f"{b.shape[0]}")
    if a.shape[0] == 0:
        raise ValueError(f"{na} and {nb} hold no problems (batch size 0)")
    if not check_inputs:
        return
    for name, x in ((na, a), (nb, b)):
        finite(name, x)
        nonnegative(name, x)
    ma, mb = a.detach().sum(-1).double(), b.detach().sum(-1).double()
    for name, mass in ((na, ma), (nb, mb)):
        if bool((mass <= 0).any()):
            raise ValueError(f"{name} has a problem with zero total mass (all-zero weights)")
    gap = float(((ma - mb).abs() / torch.maximum(ma, mb)).max())
    rtol = max(1e-5, 4 * torch.finfo(a.dtype).eps)
    if gap > rtol:
        raise ValueError(f"{na} and {nb} must have equal total mass per problem (relative gap "
                         f"{gap:.2e} > {rtol:.0e}); normalise them")


def entropic_scale(eps: float, cost: torch.Tensor, check_inputs: bool,
                   max_abs: float | None = None) -> None:
    """Reject an eps too small for the working dtype (float64, else float32): below its
    smallest normal number, or (with ``check_inputs``, a host sync) so small that max|C|/eps
    overflows it, where every exp(-C/eps) underflows and the iterations return NaN.
    ``max_abs``: max |C| over the finite entries when a value check already computed it (no
    second pass over the cost)."""
    work = torch.float64 if cost.dtype == torch.float64 else torch.float32
    info = torch.finfo(work)
    if eps < info.tiny:
        raise ValueError(f"eps={eps:g} is below the smallest normal {work} ({info.tiny:.3g})")
    if check_inputs and cost.numel():
        if max_abs is None:
            big = cost.detach().abs().max()
            if bool(torch.isinf(big)):  # +inf entries are forbidden pairs: the finite ones count
                big = cost.detach().abs().nan_to_num(posinf=0.0).max()
            max_abs = float(big)
        span = max_abs / eps
        if span > info.max / 16:
            raise ValueError(f"eps={eps:g} is too small for this cost in {work}: max|C|/eps = "
                             f"{span:.3g} overflows (at most {info.max / 16:.3g}); rescale the "
                             f"cost or raise eps")


#: physical memory of this machine, read once (torch.compile cannot trace os.sysconf)
CPU_MEMORY = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def device_memory(device: torch.device) -> int:
    """Bytes of memory on ``device``: physical RAM for CPU tensors, the GPU's total for CUDA."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return CPU_MEMORY


def fits(what: str, nbytes: int, device: torch.device | str) -> None:
    """ValueError, saying what was asked and what fits, when an allocation of ``nbytes`` for
    ``what`` exceeds the memory of ``device`` (rather than an allocator error, or an abort)."""
    device = torch.device(device)
    if device.type == "meta" or torch.compiler.is_compiling():
        return
    limit = device_memory(device)
    if nbytes > limit:
        raise ValueError(f"{what} needs {nbytes / 2**30:.4g} GiB, more than the "
                         f"{limit / 2**30:.4g} GiB of memory on {device.type}")

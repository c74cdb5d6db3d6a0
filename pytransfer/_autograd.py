"""Eager autograd helpers for the fused losses' hot paths (issue 13, fixed per-call overhead)."""

from __future__ import annotations

from collections.abc import Callable

import torch


def direct_apply(cls: type[torch.autograd.Function]) -> Callable[..., object]:
    """``cls.apply`` without ``Function.apply``'s Python layer (binding default arguments for
    ``setup_context``, unwrapping functorch's dead wrappers: about 10 us per call when cold),
    which only matters under a functorch transform: there ``cls.apply`` itself is called.
    For Functions with no ``setup_context`` and no default arguments in ``forward``."""
    if torch.autograd.function._is_setup_context_defined(cls.setup_context):
        raise TypeError(f"{cls.__name__} defines setup_context: call {cls.__name__}.apply")
    direct = super(torch.autograd.Function, cls).apply

    def apply(*args):
        if torch._C._are_functorch_transforms_active():
            return cls.apply(*args)
        return direct(*args)
    return apply

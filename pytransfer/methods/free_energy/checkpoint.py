"""Checkpoints of a process: everything needed to continue it with the same results. A process
step is not an SGD epoch (see the package docstring), so this is its own file, not the shared
trainer's ``checkpoint.pt``; it is written the same way (atomically, tensors and plain types)."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import torch

from pytransfer.methods._trainer import _atomic_save
from pytransfer.methods.free_energy.config import ProcessState


def save_checkpoint(path, model, opt, state: ProcessState, gen: torch.Generator) -> None:
    """Model, optimiser, process state and both generators: tensors and plain types only,
    written atomically (a temporary file, then ``os.replace``)."""
    _atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                  "state": asdict(state), "generator": gen.get_state(),
                  "torch_rng": torch.get_rng_state()}, Path(path))


def resume(path, model, opt, state: ProcessState, gen: torch.Generator) -> ProcessState:
    """``state`` if there is no checkpoint at ``path``, else the checkpointed state, with the
    model, optimiser and generators restored in place (loaded with ``weights_only=True``)."""
    if not path or not os.path.exists(path):
        return state
    ck = torch.load(path, weights_only=True)
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    gen.set_state(ck["generator"])
    torch.set_rng_state(ck["torch_rng"])
    return ProcessState(**ck["state"])

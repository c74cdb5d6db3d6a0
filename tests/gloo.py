"""Run a function on every rank of a local gloo group (the DDP equality tests)."""

from __future__ import annotations

import os
import socket
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank, world, port, out_dir, fn):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = fn(rank)
        path = os.path.join(out_dir, f"rank{rank}.pt")
        torch.save(result, path + ".part")
        os.replace(path + ".part", path)  # complete, or absent
        dist.barrier()  # no rank tears the group down while another still uses it
    finally:
        dist.destroy_process_group()


def run_gloo(fn, world: int, out_dir: str | Path) -> list:
    """``fn(rank)`` on ``world`` spawned processes joined in one gloo group; the list of what
    each rank returned (saved with torch.save, so tensors and plain types). ``fn`` must be a
    module-level function (it is pickled).

    A rank that aborts after every rank has saved its complete result is let pass with a
    warning: gloo's teardown now and then ends a process with "terminate called without an
    active exception" (SIGABRT) under load, after the work this checks is done."""
    try:
        mp.spawn(_rank, args=(world, _free_port(), str(out_dir), fn), nprocs=world, join=True)
    except mp.ProcessExitedException as exc:
        if exc.signal_name != "SIGABRT" or not all(
                (Path(out_dir) / f"rank{r}.pt").exists() for r in range(world)):
            raise
        warnings.warn(f"gloo teardown: {exc} after every rank saved its result", RuntimeWarning,
                      stacklevel=2)
    return [torch.load(Path(out_dir) / f"rank{r}.pt") for r in range(world)]

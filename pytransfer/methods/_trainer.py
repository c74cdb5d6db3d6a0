"""The one training loop every method uses: seeds, batches, run folder, resume, DDP.

A method says what one step's loss is; the trainer owns everything else::

    def step(ctx: StepContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        b = ctx.batch("source", n=len(xs), size=64)  # this rank's shard of a seeded batch
        logits = model(xs[b.idx])
        ce = F.cross_entropy(logits, ys[b.idx], reduction="sum") / b.total
        return ce, {"ce": ce}

    trainer = Trainer(model, torch.optim.Adam(model.parameters()), step, steps=300, seed=0,
                      method="jtln", settings={...}, run_dir=Path("runs/x"),
                      evaluate=lambda m: {"test_acc": ...}, eval_every=50)
    result = trainer.fit(progress=lambda step, total, record: ...)

**Step function.** ``step(ctx)`` returns ``(loss, metrics)``. Batches come from
``ctx.batch(name, n, size)``: an epoch-wise seeded permutation of ``range(n)`` per stream
``name`` (one ``torch.Generator`` seeded from ``seed`` draws every permutation), cut into
global batches of ``min(size, n)`` indices; under DDP each rank gets the strided shard
``idx[rank::world]`` (like ``DistributedSampler``). A loss that is a mean over a batch is
written as this rank's *share* of it, ``sum over b.idx / b.total``: the trainer sums the
gradients (and the logged metrics) over ranks, which gives exactly the global-batch mean
whatever the shard sizes (with equal shards this is the usual gradient average). ``metrics``
are scalar tensors in the same convention (shares of a global value). ``ctx.step`` is the
0-based step, ``ctx.rank`` / ``ctx.world`` the process group.

**State.** A checkpoint ``checkpoint.pt`` holds the step, the model and optimizer state
dicts, the batch generator state, every stream's permutation and cursor, torch's global RNG
state (and CUDA's), and the ``state_dict()`` of each object in ``stateful`` (e.g. a
scheduler). It is written atomically (temporary file, then ``os.replace``) every
``checkpoint_every`` steps and at the end, and read with ``torch.load(weights_only=True)``,
so state holds only tensors and plain Python types. Seed the model's initialisation yourself
(``torch.manual_seed``) before building it; the trainer restores the RNG streams it uses.

**Evaluation.** ``evaluate(model) -> dict[str, float]`` runs under ``torch.no_grad()`` in
eval mode every ``eval_every`` steps and after the last; its values join that step's record.

**Run folder.** With ``run_dir`` (or ``runs_root``, which makes ``<runs_root>/<method>-
<UTC timestamp>``), the trainer writes ``config.json`` (every setting, package and torch
versions, git commit when available), ``metrics.jsonl`` (one record a ``log_every`` steps,
appended at each checkpoint so the file always matches the checkpoint) and
``checkpoint.pt``. A non-empty folder is refused unless ``resume=True``; with resume the
settings must match those in ``config.json``, and the run continues from the checkpoint and
ends with the same metrics and weights as an uninterrupted run. Nothing is ever deleted.
Without a folder nothing is written (library use, tests).

**DDP.** Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) :func:`init_distributed`
starts ``torch.distributed`` from the environment: gloo on CPU, NCCL on GPU (each rank on
``cuda:LOCAL_RANK``). Parameters are broadcast from rank 0 at the start, gradients are
all-reduced after every backward, only rank 0 writes files; all ranks read the checkpoint
(one file system). No ``DistributedDataParallel`` wrapper: a step may call the model several
times.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
CONFIG = "config.json"

Progress = Callable[[int, int, dict | None], None]


class Batch(NamedTuple):
    """``idx``: this rank's indices (long, CPU); ``total``: the global batch size."""

    idx: torch.Tensor
    total: int


def init_distributed(device: str | torch.device = "cpu") -> tuple[int, int]:
    """(rank, world size). Starts ``torch.distributed`` from torchrun's environment variables
    when ``WORLD_SIZE`` > 1 and no group exists yet: NCCL for CUDA devices, gloo otherwise."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size()


def local_device(device: str | torch.device) -> torch.device:
    """``device`` with the CUDA index of this rank under torchrun (``LOCAL_RANK``)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def _dist_group() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def git_commit() -> str | None:
    """The commit of the source tree holding this package, or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment() -> dict[str, Any]:
    """Versions of the package, torch, numpy and Python, and the git commit."""
    import numpy

    import pytransfer

    return {"pytransfer": pytransfer.__version__, "torch": torch.__version__,
            "numpy": numpy.__version__, "python": platform.python_version(),
            "git_commit": git_commit()}


def new_run_dir(runs_root: str | Path, method: str) -> Path:
    """Creates and returns the empty folder ``<runs_root>/<method>-<UTC timestamp>``, with
    ``-1``, ``-2``... if that exists."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    base = Path(runs_root) / f"{method}-{stamp}"
    base.parent.mkdir(parents=True, exist_ok=True)
    k = 0
    while True:
        path = base.with_name(f"{base.name}-{k}") if k else base
        try:
            path.mkdir()
            return path
        except FileExistsError:
            k += 1


def resolve_run_dir(out: str | Path | None, method: str, resume: bool,
                    runs_root: str | Path = "runs") -> Path:
    """The run folder of a command: ``out`` (checked: a non-empty folder needs ``resume``), or
    a new ``<runs_root>/<method>-<timestamp>``, created by rank 0 and shared with every rank."""
    rank, world = _dist_group()
    if out is not None:
        path = Path(out)
        check_run_dir(path, resume)
        _barrier()  # every rank has checked before rank 0 writes into it
        return path
    path = new_run_dir(runs_root, method) if rank == 0 else None
    if world > 1:
        import torch.distributed as dist

        box = [path]
        dist.broadcast_object_list(box, src=0)
        path = box[0]
    return path


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def check_run_dir(path: Path, resume: bool) -> None:
    """Refuse to write into a non-empty folder unless resuming (nothing is ever deleted)."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"run folder {path} exists and is not a folder")
    if not resume and path.exists() and any(path.iterdir()):
        raise ValueError(f"run folder {path} is not empty: pass resume to continue that run, "
                         f"or choose a new folder")


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return repr(x)


@dataclass
class StepContext:
    """What a step function may use: the step, the batch streams and the process group."""

    step: int
    rank: int
    world: int
    generator: torch.Generator
    streams: dict[str, dict[str, Any]] = field(default_factory=dict)

    def batch(self, name: str, n: int, size: int) -> Batch:
        """This rank's share of the next global batch of ``min(size, n)`` indices from stream
        ``name``: consecutive slices of seeded permutations of ``range(n)`` (a new one at each
        epoch); the shard is ``global[rank::world]``."""
        if n < 1 or size < 1:
            raise ValueError(f"batch {name!r} needs n >= 1 and size >= 1, got n={n}, "
                             f"size={size}")
        size = min(size, n)
        if size < self.world:
            raise ValueError(f"batch {name!r} of {size} is smaller than the {self.world} "
                             f"processes")
        s = self.streams.get(name)
        if s is None or s["n"] != n:
            s = self.streams[name] = {"n": n, "perm": torch.randperm(n, generator=self.generator),
                                      "pos": 0}
        parts, need = [], size
        while need:
            if s["pos"] == n:
                s["perm"], s["pos"] = torch.randperm(n, generator=self.generator), 0
            take = min(need, n - s["pos"])
            parts.append(s["perm"][s["pos"]:s["pos"] + take])
            s["pos"] += take
            need -= take
        idx = torch.cat(parts)
        return Batch(idx[self.rank::self.world], size)


class TrainResult(NamedTuple):
    """``metrics``: every record (dicts with ``step`` = steps done); ``final``: the last;
    ``run_dir``: the folder written, or None."""

    metrics: list[dict]
    final: dict
    run_dir: Path | None


class Trainer:
    """See the module docstring. ``settings`` (plain, JSON-able) are recorded in
    ``config.json`` and checked on resume; ``stateful`` objects' state dicts join the
    checkpoint."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 step_fn: Callable[[StepContext], tuple[torch.Tensor, Mapping]], *,
                 steps: int, seed: int = 0, method: str = "run",
                 settings: Mapping[str, Any] | None = None, run_dir: str | Path | None = None,
                 runs_root: str | Path | None = None, resume: bool = False,
                 evaluate: Callable[[nn.Module], Mapping[str, float]] | None = None,
                 eval_every: int = 0, log_every: int = 1, checkpoint_every: int = 100,
                 stateful: Mapping[str, Any] | None = None) -> None:
        for name, v, lo in (("steps", steps, 0), ("eval_every", eval_every, 0),
                            ("log_every", log_every, 1), ("checkpoint_every", checkpoint_every, 1)):
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        if run_dir is not None and runs_root is not None:
            raise ValueError("give run_dir or runs_root, not both")
        self.model, self.optimizer, self.step_fn = model, optimizer, step_fn
        self.steps, self.seed, self.method = steps, seed, method
        self.settings = dict(settings or {})
        self.evaluate, self.eval_every = evaluate, eval_every
        self.log_every, self.checkpoint_every = log_every, checkpoint_every
        self.stateful = dict(stateful or {})
        self.resume = resume
        self.rank, self.world = _dist_group()
        if runs_root is not None:
            run_dir = new_run_dir(runs_root, method) if self.rank == 0 else None
            run_dir = self._broadcast_object(run_dir)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        if self.run_dir is not None:
            check_run_dir(self.run_dir, resume)
            _barrier()  # every rank has checked before rank 0 writes into it

    # -- distributed helpers ---------------------------------------------------------------
    def _broadcast_object(self, obj: Any) -> Any:
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def _all_reduce(self, tensors: list[torch.Tensor]) -> None:
        if self.world == 1 or not tensors:
            return
        import torch.distributed as dist

        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        offset = 0
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()

    # -- state -----------------------------------------------------------------------------
    def _config(self) -> dict[str, Any]:
        return {"method": self.method, "steps": self.steps, "seed": self.seed,
                "world_size": self.world, "settings": _jsonable(self.settings),
                "environment": environment()}

    def _state(self, step: int, ctx: StepContext) -> dict[str, Any]:
        state = {"step": step, "model": self.model.state_dict(),
                 "optimizer": self.optimizer.state_dict(),
                 "generator": ctx.generator.get_state(),
                 "streams": {k: dict(v) for k, v in ctx.streams.items()},
                 "torch_rng": torch.get_rng_state(),
                 "stateful": {k: v.state_dict() for k, v in self.stateful.items()}}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def _load(self, ctx: StepContext) -> int:
        state = torch.load(self.run_dir / CHECKPOINT, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        ctx.generator.set_state(state["generator"])
        ctx.streams.update(state["streams"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        for k, v in self.stateful.items():
            v.load_state_dict(state["stateful"][k])
        return int(state["step"])

    def _check_config(self) -> None:
        old = json.loads((self.run_dir / CONFIG).read_text())
        new = json.loads(json.dumps(self._config()))
        diff = [k for k in ("method", "steps", "seed", "settings") if old.get(k) != new[k]]
        if diff:
            raise ValueError(f"cannot resume {self.run_dir}: its config.json differs in "
                             f"{', '.join(diff)}")

    def _read_metrics(self, upto: int) -> list[dict]:
        path = self.run_dir / METRICS
        if not path.exists():
            return []
        recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        kept = [r for r in recs if r["step"] <= upto]
        if len(kept) < len(recs) and self.rank == 0:  # written after the checkpoint: redone
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
        return kept

    def _flush(self, pending: list[dict], step: int, ctx: StepContext) -> None:
        if self.run_dir is None or self.rank != 0:
            pending.clear()
            return
        with open(self.run_dir / METRICS, "a") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in pending)
        pending.clear()
        _atomic_save(self._state(step, ctx), self.run_dir / CHECKPOINT)

    def _sync_params(self) -> None:
        if self.world == 1:
            return
        import torch.distributed as dist

        for p in self.model.parameters():
            dist.broadcast(p.data, src=0)

    @torch.no_grad()
    def _evaluate(self) -> dict[str, float]:
        was = self.model.training
        self.model.eval()
        try:
            return {k: float(v) for k, v in self.evaluate(self.model).items()}
        finally:
            self.model.train(was)

    # -- the loop --------------------------------------------------------------------------
    def fit(self, progress: Progress | None = None) -> TrainResult:
        """Train to ``steps`` (from the checkpoint when resuming); ``progress(step, total,
        record)`` is called after every step (``record`` is None on steps not logged)."""
        gen = torch.Generator().manual_seed(self.seed)
        ctx = StepContext(0, self.rank, self.world, gen)
        start, history = 0, []
        if self.run_dir is not None and (self.run_dir / CHECKPOINT).exists():
            self._check_config()
            start = self._load(ctx)
            history = self._read_metrics(start)
        else:
            self._sync_params()
            if self.run_dir is not None and self.rank == 0:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                if (self.run_dir / CONFIG).exists():
                    self._check_config()
                else:
                    atomic_write_text(self.run_dir / CONFIG,
                                      json.dumps(self._config(), indent=2) + "\n")
        if progress is not None and start:
            progress(start, self.steps, history[-1] if history else None)
        pending: list[dict] = []
        self.model.train()
        for step in range(start, self.steps):
            ctx.step = step
            loss, metrics = self.step_fn(ctx)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self._all_reduce([p.grad for p in self.model.parameters() if p.grad is not None])
            self.optimizer.step()
            done = step + 1
            record = None
            last = done == self.steps
            evaluating = self.evaluate is not None and (
                last or (self.eval_every and done % self.eval_every == 0))
            if done % self.log_every == 0 or last or evaluating:
                values = [loss.detach().reshape(())] + [
                    torch.as_tensor(v).detach().reshape(()).to(loss.device)
                    for v in metrics.values()]
                vec = torch.stack([v.to(loss.dtype) for v in values])
                self._all_reduce([vec])
                record = {"step": done, "loss": float(vec[0])}
                record.update({k: float(x) for k, x in zip(metrics, vec[1:].tolist())})
                if evaluating:
                    record.update(self._evaluate())
                history.append(record)
                pending.append(record)
            if done % self.checkpoint_every == 0 or last:
                self._flush(pending, done, ctx)
            if progress is not None:
                progress(done, self.steps, record)
        final = history[-1] if history else {"step": self.steps}
        return TrainResult(history, final, self.run_dir)

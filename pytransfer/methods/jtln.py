"""JTLN and its Table 2 baselines ("Optimal Transport for Deep Joint Transfer Learning",
Lu, Chen, Saidi), on the shared trainer.

A shared feature extractor feeds a source head (Ls classes) and a target head (Lt classes).
JTLN minimises (eq. 4; the paper writes the source term twice, the second is the target one)

    lambda_s CE_s + lambda_t CE_t + alpha (1/n) sum_i l_ot(h_s(x_i), h_t(x_i)),

with l_ot the entropic OT cost between the two heads' softmax outputs on the same input
(eq. 7-11, ``pytransfer.nn.OTLoss``; ``grad="dual"`` is eq. 11, ``"implicit"`` the exact
gradient) and a class-pair cost matrix C (Ls, Lt) computed once, before training, from the
hidden layer of a small MLP pre-trained on the source labels (the paper uses AlexNet's fc7):

- ``cost="mmd"``: the MK-MMD between every source and target class cloud (eq. 12-14), with
  uniform or test-power-optimised kernel weights (``kernel_weights``);
- ``cost="ot"``: the entropic OT distance <gamma_0, C> between the class clouds under the
  squared Euclidean ground cost (eq. 15-16), see :func:`ot_class_cost`.

Only the labelled target classes enter C. It is normalised (``normalise``): ``"range"``
(C - min C) / (max C - min C) (default), ``"max"`` C / max |C|, or None (raw); the OT loss's
``eps`` is in the units of the normalised cost.

The OT term's inputs (``ot_inputs``): ``"labelled-target"`` (the paper's eq. 3, default),
``"target"`` (plus the unlabelled target split, semi-supervised) or ``"all"`` (plus the
source inputs). The target test split is used only by ``evaluate``.

Baselines (``method``): ``"target-only"`` (CE_t), ``"consecutive"`` (CE_s for the first
half of the steps, then CE_t with the untouched target head: fine-tuning with a new head),
``"joint"`` (lambda_s CE_s + lambda_t CE_t, no OT) and ``"jtln"``. Every method starts from
the same seeded random initialisation and runs the same number of steps.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pytransfer.data.tasks import TransferTask
from pytransfer.methods._trainer import Progress, StepContext, Trainer, TrainResult
from pytransfer.mmd import class_pair_mmd, optimize_kernel_weights
from pytransfer.nn import OTLoss
from pytransfer.ot import class_pair_ot

METHODS = ("target-only", "consecutive", "joint", "jtln")
COSTS = ("mmd", "ot")
OT_INPUTS = ("labelled-target", "target", "all")
GRADS = ("dual", "implicit")
NORMALISE = ("range", "max", None)
KERNEL_WEIGHTS = ("uniform", "optimized")


@dataclass
class JTLNConfig:
    """Every setting of one run (recorded in the run folder's config.json)."""

    method: str = "jtln"
    steps: int = 300
    lr: float = 1e-3
    batch_size: int = 64
    hidden: int = 64
    lambda_s: float = 1.0
    lambda_t: float = 1.0
    alpha: float = 1.0  # weight of the OT term
    eps: float = 0.1  # entropic regularisation of l_ot (the paper's 1/lambda), cost units
    grad: str = "dual"
    ot_inputs: str = "labelled-target"
    cost: str = "mmd"
    kernel_weights: str = "uniform"
    normalise: str | None = "range"
    cost_eps: float = 0.05  # class-pair OT cost: eps relative to the mean squared distance
    pretrain_steps: int = 300  # the source MLP whose hidden layer gives the cost's features
    sinkhorn_iters: int = 100
    seed: int = 0

    def check(self) -> JTLNConfig:
        """Raise ValueError naming the first bad setting."""
        for name, value, allowed in (("method", self.method, METHODS), ("cost", self.cost, COSTS),
                                     ("ot_inputs", self.ot_inputs, OT_INPUTS),
                                     ("grad", self.grad, GRADS),
                                     ("normalise", self.normalise, NORMALISE),
                                     ("kernel_weights", self.kernel_weights, KERNEL_WEIGHTS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        for name in ("steps", "batch_size", "hidden", "sinkhorn_iters"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.pretrain_steps < 0:
            raise ValueError(f"pretrain_steps must be >= 0, got {self.pretrain_steps}")
        for name in ("lambda_s", "lambda_t", "alpha"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("lr", "eps", "cost_eps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        return self


class JTLN(nn.Module):
    """Shared MLP features, a source head and a target head."""

    def __init__(self, d_in: int, num_source: int, num_target: int, hidden: int = 64) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(),
                                      nn.Linear(hidden, hidden), nn.ReLU())
        self.source_head = nn.Linear(hidden, num_source)
        self.target_head = nn.Linear(hidden, num_target)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)
        return self.source_head(h), self.target_head(h)


# -- the class-pair cost ------------------------------------------------------------------------
def pretrain_source_features(xs: torch.Tensor, ys: torch.Tensor, steps: int, *, hidden: int = 64,
                             seed: int = 0, lr: float = 1e-3,
                             batch_size: int = 64) -> Callable[[torch.Tensor], torch.Tensor]:
    """A one-hidden-layer MLP trained on the source labels; returns its hidden layer (the
    stand-in for the paper's fc7 features of a pre-trained network), detached."""
    torch.manual_seed(seed)
    body = nn.Sequential(nn.Linear(xs.shape[1], hidden), nn.ReLU())
    net = nn.Sequential(body, nn.Linear(hidden, int(ys.max()) + 1)).to(xs.device)

    def step(ctx: StepContext):
        b = ctx.batch("source", len(xs), batch_size)
        ce = F.cross_entropy(net(xs[b.idx]), ys[b.idx], reduction="sum") / b.total
        return ce, {}

    Trainer(net, torch.optim.Adam(net.parameters(), lr=lr), step, steps=steps, seed=seed,
            method="pretrain", log_every=max(steps, 1)).fit()

    def features(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return body(x)

    return features


def ot_class_cost(fs: torch.Tensor, ys: torch.Tensor, ft: torch.Tensor, yt: torch.Tensor, *,
                  eps: float, num_source: int | None = None,
                  num_target: int | None = None) -> torch.Tensor:
    """(Ls, Lt) OT distances d = <gamma_0, C> between every source and target class cloud
    (eq. 15-16): uniform weights, ground cost ||x_s - x_t||^2, gamma_0 the entropic plan at
    ``eps``. One batched point-cloud Sinkhorn (:func:`pytransfer.ot.class_pair_ot`, whose
    ground cost is ||x - y||^2 / 2: the same plan at eps / 2, the value doubled)."""
    half = class_pair_ot(fs.double(), ys, ft.double(), yt, eps=eps / 2, debias=False,
                         value="transport_cost", num_source_classes=num_source,
                         num_target_classes=num_target, max_iter=20000, tol=1e-9)
    return (2 * half).to(fs.dtype)


def normalise_cost(cost: torch.Tensor, how: str | None) -> torch.Tensor:
    """``"range"``: (C - min) / (max - min); ``"max"``: C / max |C|; None: C unchanged."""
    if how is None:
        return cost
    if how == "max":
        scale = cost.abs().max()
        return cost / scale if scale > 0 else cost
    if how == "range":
        span = cost.max() - cost.min()
        return (cost - cost.min()) / span if span > 0 else cost - cost.min()
    raise ValueError(f"normalise must be one of {NORMALISE}, got {how!r}")


def source_features(task: TransferTask, cfg: JTLNConfig) -> Callable:
    """:func:`pretrain_source_features` with ``cfg``'s settings (depends on the source set and
    ``cfg.seed`` only, so it can be shared by every label count and cost)."""
    return pretrain_source_features(task.xs, task.ys, cfg.pretrain_steps, hidden=cfg.hidden,
                                    seed=cfg.seed, lr=cfg.lr, batch_size=cfg.batch_size)


def class_cost(task: TransferTask, cfg: JTLNConfig,
               features: Callable | None = None) -> torch.Tensor:
    """The (Ls, Lt) class-pair cost of ``cfg.cost`` on pre-trained source features (of
    :func:`source_features` unless given) of the source set and the labelled target set,
    normalised per ``cfg.normalise``."""
    feats = source_features(task, cfg) if features is None else features
    fs, ft = feats(task.xs).double(), feats(task.xt).double()
    if cfg.cost == "mmd":
        weights = None
        if cfg.kernel_weights == "optimized":
            g = torch.Generator().manual_seed(cfg.seed)
            n = min(len(fs), len(ft)) // 2 * 2
            weights = optimize_kernel_weights(fs[torch.randperm(len(fs), generator=g)[:n]],
                                              ft[torch.randperm(len(ft), generator=g)[:n]])
        cost = class_pair_mmd(fs, task.ys, ft, task.yt, weights=weights,
                              num_source_classes=task.num_source,
                              num_target_classes=task.num_target)
    else:
        scale = float(torch.cdist(fs, ft).pow(2).mean())
        cost = ot_class_cost(fs, task.ys, ft, task.yt, eps=cfg.cost_eps * scale,
                             num_source=task.num_source, num_target=task.num_target)
    return normalise_cost(cost, cfg.normalise).to(task.xs.dtype)


# -- the loss -----------------------------------------------------------------------------------
def ot_pool(task: TransferTask, ot_inputs: str) -> torch.Tensor:
    """The inputs the OT term draws from (never the test split)."""
    if ot_inputs == "labelled-target":
        return task.xt
    if ot_inputs == "target":
        return torch.cat([task.xt, task.xu])
    if ot_inputs == "all":
        return torch.cat([task.xt, task.xu, task.xs])
    raise ValueError(f"ot_inputs must be one of {OT_INPUTS}, got {ot_inputs!r}")


def jtln_terms(model: JTLN, ot_loss: OTLoss | None, cfg: JTLNConfig, source, target,
               ot_batch) -> dict[str, torch.Tensor]:
    """The loss terms as shares of their batch means (see the trainer): ``source`` and
    ``target`` are (x, y, total), ``ot_batch`` (x, total) or None. Returns ``loss`` and each
    term (unweighted)."""
    terms: dict[str, torch.Tensor] = {}
    loss = torch.zeros((), device=next(model.parameters()).device)
    t_out = None
    if source is not None:
        xs, ys, ns = source
        terms["ce_s"] = F.cross_entropy(model(xs)[0], ys, reduction="sum") / ns
        loss = loss + cfg.lambda_s * terms["ce_s"]
    if target is not None:
        xt, yt, nt = target
        t_out = model(xt)
        terms["ce_t"] = F.cross_entropy(t_out[1], yt, reduction="sum") / nt
        loss = loss + cfg.lambda_t * terms["ce_t"]
    if ot_loss is not None:
        if ot_batch is None:  # labelled-target: the target batch's outputs
            s_logits, t_logits = t_out
            n = target[2]
        else:
            (s_logits, t_logits), n = model(ot_batch[0]), ot_batch[1]
        terms["ot"] = ot_loss(s_logits.softmax(-1), t_logits.softmax(-1)) / n
        loss = loss + cfg.alpha * terms["ot"]
    terms["loss"] = loss
    return terms


def make_step(model: JTLN, task: TransferTask, cfg: JTLNConfig,
              cost: torch.Tensor | None) -> Callable[[StepContext], tuple]:
    """The trainer step of ``cfg.method``."""
    use_ot = cfg.method == "jtln" and cfg.alpha > 0
    ot_loss = (OTLoss(cost, eps=cfg.eps, max_iter=cfg.sinkhorn_iters, grad=cfg.grad,
                      reduction="sum") if use_ot else None)
    pool = ot_pool(task, cfg.ot_inputs) if use_ot and cfg.ot_inputs != "labelled-target" else None
    half = cfg.steps // 2

    def step(ctx: StepContext):
        source = target = ot_batch = None
        source_phase = cfg.method == "consecutive" and ctx.step < half
        if cfg.method in ("joint", "jtln") or source_phase:
            b = ctx.batch("source", len(task.xs), cfg.batch_size)
            source = (task.xs[b.idx], task.ys[b.idx], b.total)
        if not source_phase:
            b = ctx.batch("target", len(task.xt), cfg.batch_size)
            target = (task.xt[b.idx], task.yt[b.idx], b.total)
        if pool is not None:
            b = ctx.batch("ot", len(pool), cfg.batch_size)
            ot_batch = (pool[b.idx], b.total)
        terms = jtln_terms(model, ot_loss if not source_phase else None, cfg, source, target,
                           ot_batch)
        loss = terms.pop("loss")
        return loss, terms

    return step


@torch.no_grad()
def target_accuracy(model: JTLN, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x)[1].argmax(-1) == y).float().mean())


def train(task: TransferTask, cfg: JTLNConfig, *, run_dir: str | Path | None = None,
          resume: bool = False, progress: Progress | None = None, eval_every: int = 0,
          device: str | torch.device = "cpu", cost: torch.Tensor | None = None,
          checkpoint_every: int = 100) -> tuple[JTLN, TrainResult]:
    """Train ``cfg.method`` on ``task``; records hold the loss terms and, every
    ``eval_every`` steps and at the end, ``test_acc`` (target test accuracy). ``cost``: a
    precomputed :func:`class_cost` for ``cfg`` (computed here when None)."""
    cfg.check()
    device = torch.device(device)
    task = TransferTask(*(v.to(device) if isinstance(v, torch.Tensor) else v for v in task))
    if cfg.method == "jtln" and cfg.alpha > 0:
        cost = class_cost(task, cfg) if cost is None else cost.to(device, task.xs.dtype)
    else:
        cost = None
    torch.manual_seed(cfg.seed)
    model = JTLN(task.xs.shape[1], task.num_source, task.num_target, cfg.hidden).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    settings = {**asdict(cfg), "task": task.name, "labels": len(task.yt) // task.num_target}
    trainer = Trainer(model, opt, make_step(model, task, cfg, cost), steps=cfg.steps,
                      seed=cfg.seed, method=cfg.method, settings=settings, run_dir=run_dir,
                      resume=resume, eval_every=eval_every,
                      checkpoint_every=checkpoint_every,
                      evaluate=lambda m: {"test_acc": target_accuracy(m, task.x_test,
                                                                      task.y_test)})
    return model, trainer.fit(progress)


#: the rows of the paper's Table 2: name -> settings over the base config
TABLE2 = {
    "target only": {"method": "target-only"},
    "consecutive fine-tuning": {"method": "consecutive"},
    "joint fine-tuning (no OT)": {"method": "joint"},
    "JTLN (MK-MMD cost)": {"method": "jtln", "cost": "mmd"},
    "JTLN (OT cost)": {"method": "jtln", "cost": "ot"},
}


def compare(task_names: Sequence[str], labels: Sequence[int], seeds: int, base: JTLNConfig, *,
            rows: Mapping[str, Mapping] = TABLE2, eval_every: int = 0,
            progress: Callable[[int], None] | None = None) -> list[dict]:
    """Every row of ``rows`` on every task, label count and seed (seeds 0..seeds-1); the
    source features of the class costs are trained once per task and seed. Returns one record
    a run: task, labels, seed, row, test_acc, seconds, and its metrics (``curve``).
    ``progress(steps)`` is called with the steps done after each step."""
    from pytransfer.data.tasks import transfer_task

    out = []
    for name in task_names:
        for seed in range(seeds):
            feats = None
            for n in labels:
                task = transfer_task(name, n, seed)
                for row, over in rows.items():
                    cfg = dataclasses.replace(base, seed=seed, **over).check()
                    t0 = time.perf_counter()
                    cost = None
                    if cfg.method == "jtln":
                        if feats is None:
                            feats = source_features(task, cfg)
                        cost = class_cost(task, cfg, feats)
                    hook = None if progress is None else (lambda s, t, r: progress(1))
                    _, res = train(task, cfg, cost=cost, eval_every=eval_every, progress=hook)
                    out.append({"task": name, "labels": n, "seed": seed, "row": row,
                                "test_acc": res.final["test_acc"],
                                "seconds": time.perf_counter() - t0, "curve": res.metrics})
    return out

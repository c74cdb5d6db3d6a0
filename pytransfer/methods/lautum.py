"""Lautum-regularised semi-supervised transfer and its baselines ("Lautum information based
semi-supervised transfer learning": eq. 2, eq. 3, Tables 1-2).

Two stages on one network (a feature layer and a classification head):

* pre-transfer (eq. 2): source cross-entropy - lambda * L(w; x_t), the Lautum information
  between the network and unlabelled target batches (``pytransfer.nn.LautumLoss``: fixed
  random projections of the target inputs and of the feature layer);
* post-transfer (eq. 3): a new head for the target classes, and target cross-entropy on the
  few labelled target samples.

Baselines (the paper's Tables 1-2): ``standard`` (lambda = 0), ``mmd`` (MK-MMD with 19
Gaussian kernels and the linear estimator between the feature layer on source and on
unlabelled target batches, in pre-transfer; DAN's trade-off 1; under DDP the estimator pairs
rows within each process's shard, an equally unbiased set of quad-tuples), ``te`` (Temporal
Ensembling, Laine & Aila 2017, in post-transfer: see ``temporal_ensembling``). Every stage
runs on the shared trainer (run folders, resume, DDP, progress). The target train split is
divided into the labelled samples (``labels`` in total, equal per class) and the unlabelled
rest; the test split is only evaluated, never trained on.

CIFAR-100 target (the paper's "10 specific classes", which it does not name): fine labels
0-9 (apple, aquarium_fish, baby, bear, beaver, bed, bee, beetle, bicycle, bottle), the first
ten in CIFAR-100's alphabetical order: fixed before any run, so not chosen to favour a method.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pytransfer.methods import temporal_ensembling as te
from pytransfer.methods._trainer import StepContext, Trainer
from pytransfer.mmd import gaussian_kernels
from pytransfer.nn import LautumLoss, MKMMDLoss

METHODS = ("standard", "te", "mmd", "lautum")
#: the paper's order of Tables 1-2 rows, with the display names used in reports
NAMES = {"standard": "standard", "te": "Temporal Ensembling", "mmd": "MK-MMD",
         "lautum": "Lautum"}
CIFAR100_CLASSES = tuple(range(10))
CIFAR100_CLASS_NAMES = ("apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee",
                        "beetle", "bicycle", "bottle")


class TransferData(NamedTuple):
    """A source task and a target task with train and test splits (flattened inputs)."""

    name: str
    xs: torch.Tensor
    ys: torch.Tensor
    x_train: torch.Tensor  # target train split (its labels are used only where labelled)
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_source: int
    num_target: int
    image_shape: tuple[int, ...]  # (H, W) grey or (C, H, W) colour, for augmentation


class LabelSplit(NamedTuple):
    x_lab: torch.Tensor
    y_lab: torch.Tensor
    x_unlab: torch.Tensor
    x_all: torch.Tensor  # labelled rows first, then unlabelled (Temporal Ensembling's set)


def digits_task(test_fraction: float = 1 / 3, split_seed: int = 0) -> TransferData:
    """sklearn digits: source 0-4, target 5-9 (labels 0-4) split per class into train and a
    held-out test part (fixed by ``split_seed``, the same for every run)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.as_tensor(x / 16.0, dtype=torch.float32)
    y = torch.as_tensor(y, dtype=torch.int64)
    rng = np.random.default_rng(split_seed)
    test = np.zeros(len(y), dtype=bool)
    for c in range(5, 10):
        idx = np.flatnonzero(y.numpy() == c)
        test[rng.choice(idx, size=round(test_fraction * len(idx)), replace=False)] = True
    src, test = y < 5, torch.as_tensor(test)
    train = ~src & ~test
    return TransferData("digits 0-4 -> 5-9", x[src], y[src], x[train], y[train] - 5,
                        x[test], y[test] - 5, 5, 5, (8, 8))


def spec_task(source: str, target: str, test_fraction: float = 0.25,
              split_seed: int = 0) -> TransferData:
    """Source and target from ``--data`` spec strings (:func:`pytransfer.data.load_spec`),
    e.g. ``mnist:PATH`` -> ``folder:PATH`` (notMNIST letters A-J) or ``cifar10:PATH`` ->
    ``cifar100:PATH[:classes]`` (a CIFAR-100 target without a class list keeps
    :data:`CIFAR100_CLASSES`). The whole source set trains; the target is split per class
    into a held-out test part (``test_fraction``, drawn with ``split_seed`` by
    :func:`pytransfer.data.split`, the same for every run) and the train split. Source and
    target images must have one shape (a folder spec can resize: ``folder:PATH:28x28``)."""
    from pytransfer.data import load_spec, split

    src, tgt = load_spec(source), load_spec(target)
    if target.strip().startswith("cifar100:") and len(tgt.classes) == 100:
        tgt = tgt.select_classes(list(CIFAR100_CLASSES))
    if src.x.shape[1:] != tgt.x.shape[1:]:
        raise ValueError(f"source {source!r} has inputs of shape {tuple(src.x.shape[1:])}, "
                         f"target {target!r} {tuple(tgt.x.shape[1:])}: they must match (resize "
                         "a folder with folder:PATH:HxW)")
    parts = split(tgt, 1, test=test_fraction, seed=split_seed)  # only its test part is used
    train = torch.cat([parts.labelled.y, parts.unlabelled.y])
    x_train = torch.cat([parts.labelled.x, parts.unlabelled.x])
    shape = tuple(src.x.shape[1:])
    if len(shape) != 3:
        raise ValueError(f"source {source!r} holds features of shape {shape}, not images "
                         "(C, H, W): Temporal Ensembling's augmentation needs images")
    image_shape = shape[1:] if len(shape) == 3 and shape[0] == 1 else shape
    name = f"{source} -> {target}"
    return TransferData(name, src.x.flatten(1), src.y, x_train.flatten(1), train,
                        parts.test.x.flatten(1), parts.test.y, len(src.classes),
                        len(tgt.classes), image_shape)


def split_labels(data: TransferData, labels: int, seed: int) -> LabelSplit:
    """``labels`` labelled target samples in total (labels / num_target per class, drawn with
    ``seed``); the rest of the target train split is unlabelled."""
    k = data.num_target
    if labels < k or labels % k:
        raise ValueError(f"labels must be a positive multiple of the {k} target classes, "
                         f"got {labels}")
    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for c in range(k):
        idx = torch.nonzero(data.y_train == c).flatten()
        if len(idx) <= labels // k:
            raise ValueError(f"labels={labels} needs {labels // k} per class, but class {c} "
                             f"has only {len(idx)} training samples (some must stay unlabelled)")
        chosen.append(idx[torch.randperm(len(idx), generator=gen)[:labels // k]])
    lab = torch.cat(chosen)
    mask = torch.ones(len(data.y_train), dtype=torch.bool)
    mask[lab] = False
    x_lab, x_unlab = data.x_train[lab], data.x_train[mask]
    return LabelSplit(x_lab, data.y_train[lab], x_unlab, torch.cat([x_lab, x_unlab]))


class Net(nn.Module):
    """MLP: a feature layer (the Lautum / MK-MMD features) and a classification head."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 128,
                 feature_dim: int = 64) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(),
                                      nn.Linear(hidden, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass(frozen=True)
class LautumConfig:
    """Settings of one run. Chosen before any comparison and shared by every method (not
    tuned per method): Adam, lr 1e-3, batches of 64."""

    pre_steps: int = 600
    post_steps: int = 300
    batch: int = 64
    lr: float = 1e-3
    lam: float = 0.1  # weight of the Lautum term (eq. 2's lambda)
    ridge: float = 1e-4  # LautumLoss's smooth clamp rho^2 <= 1 - ridge
    mmd_weight: float = 1.0  # DAN's trade-off for the MK-MMD baseline
    te_alpha: float = te.ALPHA
    te_w_max: float = te.W_MAX  # scaled by labelled / all target train samples
    te_ramp: float = te.RAMP_EPOCHS / 300  # fraction of post-transfer (80 of 300 epochs)
    te_noise: float = te.NOISE_STD
    eval_every: int = 100
    hidden: int = 128
    feature_dim: int = 64


def _ce_share(logits: torch.Tensor, y: torch.Tensor, total: int) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="sum") / total


def _global_term(value: torch.Tensor, world: int) -> torch.Tensor:
    """A global-batch value held by every rank: logged as value / world per rank (the trainer
    sums metrics over ranks), with the gradient of value itself (each rank's part of it flows
    through its own rows)."""
    return value + (value / world - value).detach()


def _accuracy(data: TransferData) -> Callable[[nn.Module], dict[str, float]]:
    def evaluate(model: nn.Module) -> dict[str, float]:
        pred = model(data.x_test).argmax(-1)
        return {"test_acc": float((pred == data.y_test).double().mean())}

    return evaluate


def pre_step(method: str, model: Net, data: TransferData, split: LabelSplit,
             cfg: LautumConfig) -> Callable[[StepContext], tuple[torch.Tensor, dict]]:
    """The pre-transfer step: source CE, plus -lambda L (lautum) or MK-MMD (mmd)."""
    dist = None
    lautum = mmd = None
    if method == "lautum":
        dim = max(1, min(8, cfg.batch // 8))  # p + q <= B / 4 on the global batch
        lautum = LautumLoss(data.x_train.shape[1], cfg.feature_dim, p=dim, q=dim,
                            ridge=cfg.ridge, seed=0)
    if method == "mmd":
        mmd = MKMMDLoss(gaussian_kernels(19), estimator="linear")

    def step(ctx: StepContext) -> tuple[torch.Tensor, dict]:
        nonlocal dist
        if dist is None and ctx.world > 1:  # the regularisers need global-batch statistics
            for loss in (lautum, mmd):
                if loss is not None:
                    loss.distributed = True
            dist = True
        b = ctx.batch("source", len(data.xs), cfg.batch)
        ce = _ce_share(model(data.xs[b.idx]), data.ys[b.idx], b.total)
        metrics = {"source_ce": ce}
        if method not in ("lautum", "mmd"):
            return ce, metrics
        u = ctx.batch("unlabelled", len(split.x_unlab), cfg.batch)
        xu = split.x_unlab[u.idx]
        if lautum is not None:
            info = _global_term(-lautum(xu, model.features(xu)), ctx.world)
            metrics["lautum"] = info
            return ce - cfg.lam * info, metrics
        k = min(len(b.idx), len(xu))  # the linear estimator pairs rows (a small set's batch)
        d2 = _global_term(mmd(model.features(data.xs[b.idx[:k]]), model.features(xu[:k])),
                          ctx.world)
        metrics["mk_mmd"] = d2
        return ce + cfg.mmd_weight * d2, metrics

    return step


def post_step(method: str, model: Net, data: TransferData, split: LabelSplit,
              cfg: LautumConfig, ensemble: te.TemporalEnsemble | None
              ) -> Callable[[StepContext], tuple[torch.Tensor, dict]]:
    """The post-transfer step: target CE on labelled batches (eq. 3); with ``te`` plus the
    Temporal Ensembling consistency on augmented batches of the whole target train split."""
    n_lab, n_all = len(split.y_lab), len(split.x_all)
    w_max = cfg.te_w_max * n_lab / n_all
    ramp = max(1.0, cfg.te_ramp * cfg.post_steps)
    shape = data.image_shape

    def augment(x: torch.Tensor, ctx: StepContext, total: int) -> torch.Tensor:
        """Augment this rank's rows with the draws of their places in the global batch, so
        every rank consumes the generator alike and DDP equals one process."""
        full = x.new_zeros(total, x.shape[1])
        full[ctx.rank::ctx.world] = x
        if len(shape) == 2:
            out = te.augment_digits(full, shape, ctx.generator, shift=1, noise=cfg.te_noise)
        else:
            out = te.augment_images(full.reshape(-1, *shape), ctx.generator,
                                    noise=cfg.te_noise).reshape(full.shape)
        return out[ctx.rank::ctx.world]

    def step(ctx: StepContext) -> tuple[torch.Tensor, dict]:
        b = ctx.batch("labelled", n_lab, cfg.batch)
        if method != "te":
            ce = _ce_share(model(split.x_lab[b.idx]), split.y_lab[b.idx], b.total)
            return ce, {"target_ce": ce}
        ce = _ce_share(model(augment(split.x_lab[b.idx], ctx, b.total)), split.y_lab[b.idx],
                       b.total)
        a = ctx.batch("all", n_all, cfg.batch)
        probs = model(augment(split.x_all[a.idx], ctx, a.total)).softmax(-1)
        target, seen = ensemble.targets(a.idx)
        w = te.ramp_weight(ctx.step, ramp, w_max)
        cons = te.consistency_mse(probs, target, seen, a.total)
        _update_ensemble(ensemble, a.idx, probs, ctx.world)
        return ce + w * cons, {"target_ce": ce, "consistency": cons,
                               "w": torch.tensor(w / ctx.world)}

    return step


def _update_ensemble(ensemble: te.TemporalEnsemble, idx: torch.Tensor, probs: torch.Tensor,
                     world: int) -> None:
    """Every rank applies every rank's update, so the ensembles stay identical under DDP."""
    if world == 1:
        ensemble.update(idx, probs)
        return
    import torch.distributed as dist

    parts: list = [None] * world
    dist.all_gather_object(parts, (idx, probs.detach().cpu()))
    for i, p in parts:
        ensemble.update(i, p)


class RunResult(NamedTuple):
    record: dict  # task, row, method, labels, seed, test_acc, curve
    run_dir: Path | None


def run_one(method: str, labels: int, seed: int, data: TransferData,
            cfg: LautumConfig = LautumConfig(), run_dir: str | Path | None = None,
            resume: bool = False, progress: Callable | None = None) -> RunResult:
    """Pre-transfer then post-transfer training of one method at one label count and seed;
    with ``run_dir`` the stages write ``pre/`` and ``post/`` run folders (resumable)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    split = split_labels(data, labels, seed)
    root = Path(run_dir) if run_dir is not None else None
    settings = {**asdict(cfg), "method": method, "labels": labels, "task": data.name}
    torch.manual_seed(seed)
    model = Net(data.x_train.shape[1], data.num_source, cfg.hidden, cfg.feature_dim)
    pre = Trainer(model, torch.optim.Adam(model.parameters(), lr=cfg.lr),
                  pre_step(method, model, data, split, cfg), steps=cfg.pre_steps, seed=seed,
                  method=f"lautum-{method}-pre", settings=settings,
                  run_dir=root / "pre" if root else None, resume=resume,
                  log_every=max(1, cfg.pre_steps // 20))
    pre.fit(progress=progress)
    torch.manual_seed(seed + 1)
    model.head = nn.Linear(cfg.feature_dim, data.num_target)
    ensemble = stateful = None
    if method == "te":
        ensemble = te.TemporalEnsemble(len(split.x_all), data.num_target, cfg.te_alpha)
        stateful = {"ensemble": ensemble}
    post = Trainer(model, torch.optim.Adam(model.parameters(), lr=cfg.lr),
                   post_step(method, model, data, split, cfg, ensemble),
                   steps=cfg.post_steps, seed=seed + 1, method=f"lautum-{method}-post",
                   settings=settings, run_dir=root / "post" if root else None, resume=resume,
                   evaluate=_accuracy(data), eval_every=cfg.eval_every,
                   log_every=max(1, cfg.post_steps // 20), stateful=stateful)
    result = post.fit(progress=progress)
    record = {"task": data.name, "row": NAMES[method], "method": method, "labels": labels,
              "seed": seed, "test_acc": result.final["test_acc"], "curve": result.metrics}
    return RunResult(record, root)


def run_table(data: TransferData, labels: tuple[int, ...] = (50, 100, 200), seeds: int = 3,
              methods: tuple[str, ...] = METHODS, cfg: LautumConfig = LautumConfig(),
              out: str | Path | None = None, resume: bool = False,
              progress: Callable[[str], None] | None = None) -> list[dict]:
    """Every method x label count x seed (seeds 0..seeds-1); one run folder per cell under
    ``out`` when given. ``progress(description)`` is called before each run."""
    records = []
    for n in labels:
        for method in methods:
            for seed in range(seeds):
                if progress is not None:
                    progress(f"{method}, {n} labels, seed {seed}")
                cell = Path(out) / f"{method}-L{n}-s{seed}" if out is not None else None
                records.append(run_one(method, n, seed, data, cfg, cell, resume).record)
    return records


def summary(records: list[dict]) -> dict[tuple[str, int], tuple[float, float, int]]:
    """(method, labels) -> (mean, population std, seeds) of the target test accuracy."""
    groups: dict[tuple[str, int], list[float]] = {}
    for r in records:
        groups.setdefault((r["method"], r["labels"]), []).append(r["test_acc"])
    return {k: (float(np.mean(v)), float(np.std(v)), len(v)) for k, v in groups.items()}


def table_rows(records: list[dict]) -> tuple[list[str], list[list[str]]]:
    """(header, rows): one row per method in the paper's order, ``mean ± std`` per label
    count, for the demo and the report."""
    stats = summary(records)
    labels = sorted({r["labels"] for r in records})
    methods = [m for m in METHODS if any(r["method"] == m for r in records)]
    rows = [[NAMES[m]] + [f"{stats[(m, n)][0]:.3f} ± {stats[(m, n)][1]:.3f}" for n in labels]
            for m in methods]
    return ["method"] + [f"{n} labels" for n in labels], rows


def demo_table(seeds: int = 3, quick: bool = False,
               progress: Callable[[str], None] | None = None
               ) -> tuple[list[str], list[list[str]]]:
    """The demo's table: 4 methods x 50/100/200 labels on digits 0-4 -> 5-9, mean ± std
    over ``seeds`` (``quick``: a quarter of the steps)."""
    cfg = LautumConfig()
    if quick:
        cfg = replace(cfg, pre_steps=cfg.pre_steps // 4, post_steps=cfg.post_steps // 4,
                      eval_every=cfg.post_steps // 4)
    return table_rows(run_table(digits_task(), seeds=seeds, cfg=cfg, progress=progress))

"""Inductive transfer tasks for the JTLN experiments (source classes differ from target
classes): labelled source, few labelled target, an unlabelled target split and a held-out
test split that training never sees.

- ``digits``: sklearn digits 0-4 (source) -> 5-9 (target), the README's default task.
- ``styles``: the positive control. Every digit class is split by style, the ink mass of the
  image (below or above the class median): source = the 10 thin "style A" classes, target = the
  10 thick "style B" classes, on disjoint images. Each target class has a sibling source
  class, as the aircraft variants of one manufacturer have siblings among the others in
  "Optimal Transport for Deep Joint Transfer Learning" (section 4).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

TASKS = ("digits", "styles")


class TransferTask(NamedTuple):
    """Source (xs, ys), labelled target (xt, yt), unlabelled target inputs xu, and the target
    test split (x_test, y_test); labels are 0..L-1 on each side."""

    name: str
    xs: torch.Tensor
    ys: torch.Tensor
    xt: torch.Tensor
    yt: torch.Tensor
    xu: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_source: int
    num_target: int


def split_target(x: torch.Tensor, y: torch.Tensor, labels: int, seed: int,
                 unlabelled: float = 0.5) -> tuple[torch.Tensor, ...]:
    """Seeded per-class split of a target set: ``labels`` labelled samples per class, then
    ``unlabelled`` of the rest as unlabelled inputs, the remainder as test. Returns
    (xt, yt, xu, x_test, y_test)."""
    if isinstance(labels, bool) or not isinstance(labels, int) or labels < 1:
        raise ValueError(f"labels must be an integer >= 1 per class, got {labels!r}")
    if not 0.0 <= unlabelled < 1.0:
        raise ValueError(f"unlabelled must be in [0, 1), got {unlabelled}")
    rng = np.random.default_rng(seed)
    lab, unl, test = [], [], []
    yn = y.numpy()
    for c in np.unique(yn):
        idx = rng.permutation(np.flatnonzero(yn == c))
        if len(idx) < labels + 1:
            raise ValueError(f"labels={labels} per class: target class {int(c)} has only "
                             f"{len(idx)} samples (at least one must stay for testing)")
        rest = idx[labels:]
        k = int(unlabelled * len(rest))
        lab.append(idx[:labels])
        unl.append(rest[:k])
        test.append(rest[k:])
    lab, unl, test = (torch.as_tensor(np.concatenate(v)) for v in (lab, unl, test))
    return x[lab], y[lab], x[unl], x[test], y[test]


def max_labels(task: str) -> int:
    """The largest labels-per-class a task admits (one sample per class stays for testing)."""
    x, y = _digits()
    if task == "digits":
        counts = np.bincount(y[y >= 5])[5:]
    elif task == "styles":
        counts = np.bincount(y[~_thin(x, y)])
    else:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return int(counts.min()) - 1


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return x / 16.0, y


def _thin(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Style A: ink mass below the median of its digit class."""
    ink = x.sum(1)
    thin = np.zeros(len(y), dtype=bool)
    for c in range(10):
        m = y == c
        thin[m] = ink[m] < np.median(ink[m])
    return thin


def transfer_task(task: str, labels: int, seed: int = 0, unlabelled: float = 0.5,
                  dtype: torch.dtype = torch.float32) -> TransferTask:
    """The ``digits`` or ``styles`` task with ``labels`` labelled target samples per class
    (seeded split; the source is every image of the source classes)."""
    x, y = _digits()
    if task == "digits":
        src = y < 5
        ys, yt_all = y[src], y[~src] - 5
    elif task == "styles":
        src = _thin(x, y)
        ys, yt_all = y[src], y[~src]
    else:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    xt_all = torch.as_tensor(x[~src], dtype=dtype)
    xt, yt, xu, x_test, y_test = split_target(xt_all, torch.as_tensor(yt_all), labels, seed,
                                              unlabelled)
    return TransferTask(task, torch.as_tensor(x[src], dtype=dtype), torch.as_tensor(ys), xt,
                        yt, xu, x_test, y_test, int(ys.max()) + 1, int(yt_all.max()) + 1)


def task_from_dataset(x: torch.Tensor, y: torch.Tensor, labels: int, seed: int = 0,
                      name: str = "data", unlabelled: float = 0.5) -> TransferTask:
    """A transfer task from one labelled data set: inputs flattened to vectors, the classes
    present sorted and cut in two halves, the first half the source (every sample), the second
    the target (split by :func:`split_target`); labels renumbered 0..L-1 on each side."""
    classes = torch.unique(y)
    if len(classes) < 2:
        raise ValueError(f"the data has {len(classes)} class(es); a transfer task needs >= 2")
    x = x.reshape(len(x), -1).float()
    half = len(classes) // 2
    remap = torch.full((int(classes.max()) + 1,), -1, dtype=torch.int64)
    remap[classes[:half]] = torch.arange(half)
    remap[classes[half:]] = torch.arange(len(classes) - half)
    src = torch.isin(y, classes[:half])
    xt, yt, xu, x_test, y_test = split_target(x[~src], remap[y[~src]], labels, seed, unlabelled)
    return TransferTask(name, x[src], remap[y[src]], xt, yt, xu, x_test, y_test, half,
                        len(classes) - half)

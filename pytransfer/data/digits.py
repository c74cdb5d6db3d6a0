"""The default transfer task: sklearn digits 0-4 (source) -> 5-9 (target)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch


class DigitsTransfer(NamedTuple):
    xs: torch.Tensor  # (Ns, 64) source inputs in [0, 1]
    ys: torch.Tensor  # (Ns,) labels 0..4
    xt_train: torch.Tensor  # (Nt_l, 64) labelled target inputs
    yt_train: torch.Tensor  # labels 0..4 (digit - 5)
    xt_test: torch.Tensor
    yt_test: torch.Tensor


def digits_transfer(target_per_class: int = 5, seed: int = 0,
                    dtype: torch.dtype = torch.float32) -> DigitsTransfer:
    """Source: every digit 0-4; target: ``target_per_class`` labelled 5-9 each, the rest test."""
    if target_per_class < 1:
        raise ValueError(f"target_per_class must be >= 1, got {target_per_class}")
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.as_tensor(x / 16.0, dtype=dtype)
    y = torch.as_tensor(y, dtype=torch.int64)
    src = y < 5
    rng = np.random.default_rng(seed)
    train = np.zeros(len(y), dtype=bool)
    for c in range(5, 10):
        idx = np.flatnonzero(y.numpy() == c)
        train[rng.choice(idx, size=target_per_class, replace=False)] = True
    tgt_train = torch.as_tensor(train)
    tgt_test = ~src & ~tgt_train
    return DigitsTransfer(x[src], y[src], x[tgt_train], y[tgt_train] - 5, x[tgt_test],
                          y[tgt_test] - 5)

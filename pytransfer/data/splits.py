"""Seeded labelled / unlabelled / test splits of a :class:`ClassificationData`."""

from __future__ import annotations

from typing import NamedTuple

import torch

from pytransfer.data.classification import ClassificationData


class Split(NamedTuple):
    labelled: ClassificationData
    unlabelled: ClassificationData
    test: ClassificationData


def _perm(n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randperm(n, generator=gen)


def split(data: ClassificationData, labels: int, *, per_class: bool = True,
          unlabelled: int | None = None, test: float = 0.25, seed: int = 0) -> Split:
    """Disjoint labelled / unlabelled / test parts of ``data``, drawn with ``seed``.

    ``test``: the fraction of every class held out first; it depends only on ``data``,
    ``test`` and ``seed`` (not on ``labels``), so runs over several label counts share one test
    split. ``labels``: labelled examples per class (``per_class``) or in total, drawn from the
    rest; a seed's labelled set for a smaller count is a subset of that for a larger one.
    ``unlabelled``: how many of the remaining examples form the unlabelled part (their ``y`` is
    kept, for evaluation only); None: all of them. Each part keeps the order of ``data``.
    ValueError for counts that do not fit (more labels than a class has, ...).
    """
    if isinstance(labels, bool) or not isinstance(labels, int) or labels < 1:
        raise ValueError(f"labels must be an int >= 1, got {labels!r}")
    if isinstance(test, bool) or not isinstance(test, (int, float)) or not 0 <= test < 1:
        raise ValueError(f"test must be a fraction in [0, 1), got {test!r}")
    if unlabelled is not None and (isinstance(unlabelled, bool) or not isinstance(unlabelled, int)
                                   or unlabelled < 0):
        raise ValueError(f"unlabelled must be an int >= 0 or None, got {unlabelled!r}")
    gen = torch.Generator().manual_seed(seed)
    y = data.y
    pools = [torch.nonzero(y == c).flatten() for c in range(len(data.classes))]
    pools = [p[_perm(len(p), gen)] for p in pools]
    n_test = [round(test * len(p)) for p in pools]
    test_idx = torch.cat([p[:k] for p, k in zip(pools, n_test)])
    rest = [p[k:] for p, k in zip(pools, n_test)]
    held = " outside the test split" if test > 0 else ""
    if per_class:
        for c, p in enumerate(rest):
            if len(p) < labels:
                raise ValueError(f"labels={labels} per class, but class {data.classes[c]!r} has "
                                 f"only {len(p)} examples{held}")
        lab_idx = torch.cat([p[:labels] for p in rest])
        left = torch.cat([p[labels:] for p in rest])
    else:
        pool = torch.cat(rest)
        pool = pool[_perm(len(pool), gen)]
        if len(pool) < labels:
            raise ValueError(f"labels={labels} in total, but only {len(pool)} examples{held}")
        lab_idx, left = pool[:labels], pool[labels:]
    left = left[_perm(len(left), gen)]
    if unlabelled is not None:
        if unlabelled > len(left):
            raise ValueError(f"unlabelled={unlabelled}, but only {len(left)} examples remain "
                             "after the labelled and test parts")
        left = left[:unlabelled]
    return Split(*(data.subset(idx.sort().values) for idx in (lab_idx, left, test_idx)))

"""The one return type of every reader: inputs, integer labels and class names."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ClassificationData:
    """``x``: float32 (N, ...) inputs (images (N, C, H, W) in [0, 1], features (N, d));
    ``y``: int64 (N,) labels in [0, len(classes)); ``classes``: the name of each label."""

    x: torch.Tensor
    y: torch.Tensor
    classes: list[str]

    def __post_init__(self) -> None:
        if not isinstance(self.x, torch.Tensor) or self.x.dtype != torch.float32:
            raise TypeError(f"x must be a float32 tensor, got {getattr(self.x, 'dtype', self.x)}")
        if not isinstance(self.y, torch.Tensor) or self.y.dtype != torch.int64:
            raise TypeError(f"y must be an int64 tensor, got {getattr(self.y, 'dtype', self.y)}")
        if self.x.dim() < 1 or self.y.dim() != 1 or self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"x (N, ...) and y (N,) must have the same N, got shapes "
                             f"{tuple(self.x.shape)} and {tuple(self.y.shape)}")
        if len(self.classes) == 0:
            raise ValueError("classes must name at least one class")
        if self.y.numel() and (int(self.y.min()) < 0 or int(self.y.max()) >= len(self.classes)):
            raise ValueError(f"labels must lie in [0, {len(self.classes)}) (one per class name), "
                             f"got [{int(self.y.min())}, {int(self.y.max())}]")

    def __len__(self) -> int:
        return self.y.shape[0]

    def subset(self, index: torch.Tensor) -> ClassificationData:
        """The rows ``index`` (indices or a boolean mask), same classes."""
        return ClassificationData(self.x[index], self.y[index], list(self.classes))

    def flatten(self) -> ClassificationData:
        """Inputs as (N, prod(...)) vectors."""
        return ClassificationData(self.x.flatten(1), self.y, list(self.classes))

    def select_classes(self, classes: Sequence[int | str]) -> ClassificationData:
        """Only the rows of ``classes`` (indices or names), relabelled 0..k-1 in the given order."""
        picked = [_class_index(self.classes, c) for c in classes]
        if not picked:
            raise ValueError("classes must name at least one class")
        if len(set(picked)) != len(picked):
            raise ValueError(f"classes lists a class twice: {list(classes)}")
        relabel = torch.full((len(self.classes),), -1, dtype=torch.int64)
        relabel[torch.tensor(picked)] = torch.arange(len(picked))
        new_y = relabel[self.y]
        keep = new_y >= 0
        return ClassificationData(self.x[keep], new_y[keep], [self.classes[i] for i in picked])


def _class_index(names: list[str], c: int | str) -> int:
    if isinstance(c, str) and c in names:
        return names.index(c)
    if isinstance(c, str) and c.strip().lstrip("-").isdigit():
        c = int(c)
    if isinstance(c, int) and not isinstance(c, bool) and 0 <= c < len(names):
        return c
    raise ValueError(f"unknown class {c!r}: not one of the {len(names)} class names or an index "
                     f"in [0, {len(names)})")

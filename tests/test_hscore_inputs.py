"""Bad input to pytransfer.hscore: a clear error that names the argument (issue 6)."""

from __future__ import annotations

import math

import pytest
import torch
from test_hscore import problem

from pytransfer.hscore import HScoreStats, h_score, optimal_h_score, pixelwise_h_score

F, Y = problem(30, 3, 3)


def _poke(t, value):
    t = t.clone()
    t.view(-1)[0] = value
    return t


CASES = [
    ("float labels", lambda: h_score(F, Y.double()), TypeError, "labels must have an integer"),
    ("negative label", lambda: h_score(F, _poke(Y, -1)), ValueError, "labels has negative"),
    ("label >= C", lambda: h_score(F, Y, num_classes=2), ValueError, ">= num_classes=2"),
    ("N mismatch", lambda: h_score(F, Y[:-1]), ValueError, "labels has 29 rows"),
    ("one class", lambda: h_score(F, torch.zeros(30, dtype=torch.long)), ValueError,
     "num_classes must be >= 2"),
    ("nan", lambda: h_score(_poke(F, math.nan), Y), ValueError, "features contains NaN"),
    ("inf", lambda: h_score(_poke(F, math.inf), Y), ValueError, "features contains NaN"),
    ("d = 0", lambda: h_score(F[:, :0], Y), ValueError, "d >= 1"),
    ("1-D features", lambda: h_score(F[:, 0], Y), ValueError, "features must be 2-D or 3-D"),
    ("int features", lambda: h_score(Y[:, None].repeat(1, 2), Y), TypeError, "floating dtype"),
    ("shrinkage > 1", lambda: h_score(F, Y, shrinkage=1.5), ValueError, r"in \[0, 1\]"),
    ("shrinkage name", lambda: h_score(F, Y, shrinkage="oas"), ValueError, "ledoit-wolf"),
    ("backend", lambda: h_score(F, Y, backend="gpu"), ValueError, "backend must be one of"),
    ("stats d", lambda: HScoreStats(0, 3), ValueError, "d must be >= 1"),
    ("stats d mismatch", lambda: HScoreStats(4, 3).update(F, Y), ValueError, "d=3"),
    ("merge d", lambda: HScoreStats(3, 3).merge(HScoreStats(4, 3)), ValueError,
     "cannot merge statistics of \\(d=4"),
    ("merge C", lambda: HScoreStats(3, 3).merge(HScoreStats(3, 4)), ValueError, "C=4"),
    ("merge T", lambda: HScoreStats(3, 3).update(F, Y).merge(
        HScoreStats(3, 3).update(F[None].repeat(2, 1, 1), Y)), ValueError, "feature-set counts"),
    ("empty score", lambda: HScoreStats(3, 3).h_score(), ValueError, "no samples"),
    ("map >= C", lambda: pixelwise_h_score(F, torch.full((30, 2), 3), 3), ValueError,
     "label_maps has entries >= num_classes=3"),
    ("map rows", lambda: pixelwise_h_score(F, torch.zeros(29, 2, dtype=torch.long), 3),
     ValueError, "label_maps has 29 rows"),
    ("map dtype", lambda: pixelwise_h_score(F, torch.zeros(30, 2), 3), TypeError, "integer"),
    ("pmf sum", lambda: optimal_h_score(torch.ones(3, 2)), ValueError, "sum to 1"),
    ("pmf negative", lambda: optimal_h_score(torch.tensor([[1.5, -0.5]])), ValueError,
     "negative"),
]


@pytest.mark.parametrize("name,call,exc,match", CASES, ids=[c[0] for c in CASES])
def test_bad_input(name, call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_check_inputs_false_skips_value_checks():
    stats = HScoreStats(3, 3, check_inputs=False)
    stats.update(F, Y)  # no host-side value scan; shapes still checked
    with pytest.raises(ValueError, match="labels has 29 rows"):
        stats.update(F, Y[:-1])

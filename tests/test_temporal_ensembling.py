"""Temporal Ensembling pieces (Laine & Aila 2017) against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from pytransfer.methods.temporal_ensembling import (
    TemporalEnsemble,
    augment_digits,
    augment_images,
    consistency_mse,
    hflip,
    ramp_weight,
    translate,
)


def test_ema_with_bias_correction_by_hand():
    ens = TemporalEnsemble(3, 2, alpha=0.6)
    idx = torch.tensor([0, 2])
    _, seen = ens.targets(idx)
    assert not seen.any()  # never updated: no target yet
    ens.update(idx, torch.tensor([[1.0, 0.0], [0.5, 0.5]]))
    # Z = 0.4 z; z~ = Z / (1 - 0.6) = z
    target, seen = ens.targets(torch.tensor([0, 1, 2]))
    torch.testing.assert_close(target[[0, 2]], torch.tensor([[1.0, 0.0], [0.5, 0.5]],
                                                            dtype=torch.float64))
    assert seen.tolist() == [True, False, True]
    ens.update(torch.tensor([0]), torch.tensor([[0.0, 1.0]]))
    # Z = 0.6 * [0.4, 0] + 0.4 * [0, 1] = [0.24, 0.4]; 1 - 0.6^2 = 0.64
    torch.testing.assert_close(ens.Z[0], torch.tensor([0.24, 0.4], dtype=torch.float64))
    torch.testing.assert_close(ens.targets(torch.tensor([0]))[0][0],
                               torch.tensor([0.375, 0.625], dtype=torch.float64))
    assert ens.t.tolist() == [2, 0, 1]
    fresh = TemporalEnsemble(3, 2, alpha=0.6)
    fresh.load_state_dict(ens.state_dict())
    assert torch.equal(fresh.Z, ens.Z) and torch.equal(fresh.t, ens.t)


def test_ramp_by_hand():
    assert ramp_weight(0, 80, 30.0) == pytest.approx(30 * math.exp(-5), rel=1e-12)
    assert ramp_weight(0, 80, 30.0) == pytest.approx(0.2021384, rel=1e-6)
    assert ramp_weight(40, 80, 30.0) == pytest.approx(8.5951439, rel=1e-6)
    assert ramp_weight(80, 80, 30.0) == 30.0
    assert ramp_weight(500, 80, 30.0) == 30.0


def test_consistency_mse_by_hand():
    probs = torch.tensor([[0.2, 0.8], [1.0, 0.0], [0.5, 0.5]])
    targets = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.5, 0.5]], dtype=torch.float64)
    mask = torch.tensor([True, False, True])
    # row 0: (0.04 + 0.04) / 2 = 0.04; row 1 masked; row 2: 0; over 3 rows
    assert float(consistency_mse(probs, targets, mask)) == pytest.approx(0.04 / 3)
    assert float(consistency_mse(probs, targets, mask, total=8)) == pytest.approx(0.04 / 8)


def test_translate_moves_by_the_drawn_offsets_with_zero_fill():
    x = torch.zeros(30, 1, 5, 5)
    x[:, 0, 2, 2] = 1.0
    x[:, 0, 0, 0] = 2.0
    out = translate(x, 1, torch.Generator().manual_seed(3))
    offsets = torch.randint(-1, 2, (30, 2), generator=torch.Generator().manual_seed(3))
    for i, (dy, dx) in enumerate(offsets.tolist()):
        assert out[i, 0, 2 + dy, 2 + dx] == 1.0
        corner_kept = 0 <= dy and 0 <= dx
        assert float(out[i].sum()) == (3.0 if corner_kept else 1.0)
    assert len({tuple(o) for o in offsets.tolist()}) > 3


def test_hflip_flips_about_half():
    x = torch.arange(6, dtype=torch.float32).reshape(1, 1, 2, 3).repeat(200, 1, 1, 1)
    out = hflip(x, torch.Generator().manual_seed(0))
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert bool((flipped ^ kept).all()) and 60 < int(flipped.sum()) < 140


def test_augmentations_add_noise_and_keep_shapes():
    gen = torch.Generator().manual_seed(1)
    x = torch.zeros(400, 64)
    out = augment_digits(x, (8, 8), gen)
    assert out.shape == x.shape
    assert float(out.std()) == pytest.approx(0.15, rel=0.05)
    img = torch.rand(4, 3, 8, 8, generator=gen)
    assert augment_images(img, gen, noise=0.0).shape == img.shape

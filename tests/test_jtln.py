"""JTLN and its baselines: the loss against POT and plain formulas, the class-pair OT cost
against POT, smoke runs, the OT inputs chosen by ot_inputs, and the test split never seen."""

import dataclasses

import numpy as np
import ot as pot
import pytest
import torch

from pytransfer.data.tasks import TransferTask, split_target, transfer_task
from pytransfer.methods.jtln import (
    JTLN,
    JTLNConfig,
    jtln_terms,
    normalise_cost,
    ot_class_cost,
    ot_pool,
    train,
)
from pytransfer.nn import OTLoss


def _tiny_task(seed=0) -> TransferTask:
    """64 samples: 30 source, 10 labelled target, 12 unlabelled, 12 test."""
    t = transfer_task("digits", 2, seed=seed)
    g = torch.Generator().manual_seed(seed)
    src = torch.randperm(len(t.xs), generator=g)[:30]
    return t._replace(xs=t.xs[src], ys=t.ys[src], xu=t.xu[:12], x_test=t.x_test[:12],
                      y_test=t.y_test[:12])


def _np_ce(logits, y):
    z = logits.detach().double().numpy()
    logp = z - z.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    return -logp[np.arange(len(y)), y.numpy()].mean()


def test_loss_terms_match_plain_formulas_and_pot():
    torch.manual_seed(0)
    model = JTLN(64, 5, 5, hidden=16).double()
    t = _tiny_task()
    cost = torch.rand(5, 5, dtype=torch.float64)
    cfg = JTLNConfig(alpha=0.7, lambda_s=0.3, lambda_t=1.5, eps=0.2)
    ot_loss = OTLoss(cost, eps=cfg.eps, max_iter=5000, tol=1e-12, reduction="sum")
    xs, xt, xo = t.xs.double()[:8], t.xt.double()[:6], t.xu.double()[:5]
    terms = jtln_terms(model, ot_loss, cfg, (xs, t.ys[:8], 8), (xt, t.yt[:6], 6), (xo, 5))
    ce_s, ce_t = _np_ce(model(xs)[0], t.ys[:8]), _np_ce(model(xt)[1], t.yt[:6])
    ps, pt = (z.softmax(-1).detach().numpy() for z in model(xo))
    ot_ref = np.mean([pot.sinkhorn2(a, b, cost.numpy(), cfg.eps, stopThr=1e-12,
                                    numItermax=100000) for a, b in zip(ps, pt)])
    assert float(terms["ce_s"].detach()) == pytest.approx(ce_s, rel=1e-10)
    assert float(terms["ce_t"].detach()) == pytest.approx(ce_t, rel=1e-10)
    assert float(terms["ot"].detach()) == pytest.approx(ot_ref, rel=1e-6)
    assert float(terms["loss"].detach()) == pytest.approx(0.3 * ce_s + 1.5 * ce_t + 0.7 * ot_ref,
                                                 rel=1e-6)
    # default ot_inputs: the OT term on the labelled target batch itself
    on_target = jtln_terms(model, ot_loss, cfg, None, (xt, t.yt[:6], 6), None)
    pst, ptt = (z.softmax(-1).detach().numpy() for z in model(xt))
    ref = np.mean([pot.sinkhorn2(a, b, cost.numpy(), cfg.eps, stopThr=1e-12,
                                 numItermax=100000) for a, b in zip(pst, ptt)])
    assert float(on_target["ot"].detach()) == pytest.approx(ref, rel=1e-6)


def test_ot_class_cost_matches_pot_per_pair():
    g = torch.Generator().manual_seed(1)
    fs, ft = torch.randn(11, 3, generator=g, dtype=torch.float64), torch.randn(
        7, 3, generator=g, dtype=torch.float64)
    ys, yt = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 1]), torch.tensor([0, 1, 1, 0, 1, 1, 0])
    eps = 0.5
    got = ot_class_cost(fs, ys, ft, yt, eps=eps)
    for a in range(3):
        for b in range(2):
            xa, xb = fs[ys == a].numpy(), ft[yt == b].numpy()
            M = ((xa[:, None] - xb[None]) ** 2).sum(-1)
            ref = pot.sinkhorn2(np.full(len(xa), 1 / len(xa)), np.full(len(xb), 1 / len(xb)), M,
                                eps, stopThr=1e-12, numItermax=100000)
            assert float(got[a, b]) == pytest.approx(ref, rel=1e-5)
    with pytest.raises(ValueError, match="no samples"):
        ot_class_cost(fs, torch.where(ys == 1, 2, ys), ft, yt, eps=eps)


def test_normalise_cost():
    c = torch.tensor([[-1.0, 1.0], [3.0, 0.0]])
    assert torch.equal(normalise_cost(c, "range"), torch.tensor([[0.0, 0.5], [1.0, 0.25]]))
    assert torch.equal(normalise_cost(c, "max"), c / 3)
    assert torch.equal(normalise_cost(c, None), c)


@pytest.mark.parametrize("method,extra", [("target-only", {}), ("consecutive", {}),
                                          ("joint", {}), ("jtln", {"cost": "mmd"}),
                                          ("jtln", {"cost": "ot", "grad": "implicit",
                                                    "kernel_weights": "optimized"})])
def test_smoke_64_samples_loss_decreases(method, extra):
    cfg = JTLNConfig(method=method, steps=40, lr=1e-2, batch_size=16, hidden=16,
                     pretrain_steps=10, **extra)
    _, res = train(_tiny_task(), cfg)
    losses = [r["loss"] for r in res.metrics]
    half = 20 if method == "consecutive" else 0  # the target phase starts at half the steps
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[half:half + 5])
    assert 0.0 <= res.final["test_acc"] <= 1.0
    assert ("ot" in res.final) == (method == "jtln")


@pytest.mark.parametrize("ot_inputs", ["labelled-target", "target", "all"])
def test_ot_inputs_honoured_and_test_split_never_seen(ot_inputs):
    t = _tiny_task()
    t = t._replace(x_test=torch.full_like(t.x_test, float("nan")))  # poison: any use -> NaN
    seen = []
    orig = JTLN.forward

    def spy(self, x):
        if self.training:
            seen.append(x.detach().clone())
        return orig(self, x)

    cfg = JTLNConfig(steps=6, batch_size=16, hidden=16, pretrain_steps=2, ot_inputs=ot_inputs)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(JTLN, "forward", spy)
        _, res = train(t, cfg)
    assert all(np.isfinite(r["loss"]) for r in res.metrics)
    rows = torch.cat(seen)
    assert not rows.isnan().any()

    def hits(x):
        return int((torch.cdist(rows, x) < 1e-9).any(1).sum())

    assert hits(t.xt) > 0 and hits(t.xs) > 0
    assert (hits(t.xu) > 0) == (ot_inputs != "labelled-target")
    pool = ot_pool(t, ot_inputs)
    assert len(pool) == {"labelled-target": 10, "target": 22, "all": 52}[ot_inputs]


def test_bad_settings_and_splits_are_value_errors():
    with pytest.raises(ValueError, match="alpha"):
        train(_tiny_task(), JTLNConfig(alpha=-1.0))
    with pytest.raises(ValueError, match="ot_inputs"):
        train(_tiny_task(), dataclasses.replace(JTLNConfig(), ot_inputs="test"))
    with pytest.raises(ValueError, match="has only"):
        split_target(torch.zeros(4, 2), torch.tensor([0, 0, 1, 1]), 2, 0)


def test_styles_task_is_disjoint_with_sibling_classes():
    t = transfer_task("styles", 3, seed=0)
    assert t.num_source == t.num_target == 10 and len(t.yt) == 30
    d = torch.cdist(t.xs, torch.cat([t.xt, t.xu, t.x_test]))
    assert bool((d > 0).all())  # disjoint images (digits has no exact duplicates across)
    # thin source classes carry less ink than their thick siblings
    assert t.xs.sum(1).mean() < t.x_test.sum(1).mean()


def test_task_from_dataset_halves_the_sorted_classes():
    from pytransfer.data.tasks import task_from_dataset

    y = torch.tensor([7, 3, 9, 3, 7, 9, 5, 5, 9, 7, 3, 5] * 3)
    x = torch.arange(len(y) * 4, dtype=torch.float32).reshape(len(y), 2, 2)
    t = task_from_dataset(x, y, labels=2, seed=0, name="npz:x")
    assert (t.num_source, t.num_target) == (2, 2)  # classes 3, 5 | 7, 9
    assert t.xs.shape[1] == 4 and sorted(t.ys.unique().tolist()) == [0, 1]
    assert len(t.xs) == 18 and len(t.yt) == 4 and len(t.xu) + len(t.x_test) == 14
    rows = torch.cat([t.xs, t.xt, t.xu, t.x_test])
    assert len(torch.unique(rows, dim=0)) == len(y)  # every sample once
    src_first = x.reshape(len(y), -1)[torch.isin(y, torch.tensor([3, 5]))]
    assert torch.equal(t.xs, src_first)


def test_jtln_killed_and_resumed_equals_uninterrupted(tmp_path):
    cfg = JTLNConfig(steps=10, batch_size=16, hidden=16, pretrain_steps=3, ot_inputs="target")

    class Kill(Exception):
        pass

    def killer(step, total, record):
        if step == 7:
            raise Kill

    ref_model, ref = train(_tiny_task(), cfg, run_dir=tmp_path / "a", checkpoint_every=3,
                           eval_every=5)
    with pytest.raises(Kill):
        train(_tiny_task(), cfg, run_dir=tmp_path / "b", checkpoint_every=3, eval_every=5,
              progress=killer)
    model, res = train(_tiny_task(), cfg, run_dir=tmp_path / "b", checkpoint_every=3,
                       eval_every=5, resume=True)
    assert res.metrics == ref.metrics and len(res.metrics) == 10
    for p, q in zip(ref_model.parameters(), model.parameters()):
        assert torch.equal(p, q)

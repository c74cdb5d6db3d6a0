"""H-score beyond one score: pixel-wise, ACE, the paper's synthetic tasks, transferability,
task clustering, the soft-HGR loss, the CLI and the demo (issue 6)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from test_hscore import np_h_score, problem
from typer.testing import CliRunner

from pytransfer.cli import app
from pytransfer.hscore import (
    cluster_tasks,
    h_score,
    optimal_h_score,
    pixelwise_h_score,
    quantize_label_maps,
    rank_sources,
    transferability,
    transferability_matrix,
)
from pytransfer.hscore.ace import dtm
from pytransfer.hscore.reference import pixelwise_h_score_reference
from pytransfer.nn.hscore_loss import HScore, soft_hgr


def test_pixelwise_matches_per_pixel_loop(backend):
    f, _ = problem(90, 6, 4, seed=2)
    gen = torch.Generator().manual_seed(3)
    maps = torch.randint(0, 4, (90, 7), generator=gen)
    maps[:, 2] = torch.randint(0, 2, (90,), generator=gen)  # classes 2, 3 absent at pixel 2
    want = torch.tensor([np_h_score(f.numpy(), maps[:, p].numpy()) for p in range(7)],
                        dtype=torch.float64)
    got = pixelwise_h_score(f, maps, 4, backend=backend)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(pixelwise_h_score_reference(f, maps, 4), want, rtol=1e-10,
                               atol=1e-14)
    shr = pixelwise_h_score(f.float(), maps, 4, shrinkage=0.2, backend=backend)
    want = [np_h_score(f.float().double().numpy(), maps[:, p].numpy(), 0.2) for p in range(7)]
    torch.testing.assert_close(shr, torch.tensor(want, dtype=torch.float64), rtol=1e-5,
                               atol=1e-9)


def test_ace_matches_svd_of_the_dtm():
    gen = torch.Generator().manual_seed(0)
    P = torch.rand(9, 5, generator=gen, dtype=torch.float64) ** 3
    P[3] = 0  # an impossible x
    P = P / P.sum()
    s = torch.linalg.svdvals(dtm(P))
    for k in (1, 2, None):
        want = (s[: (k or 4)] ** 2).sum()
        torch.testing.assert_close(optimal_h_score(P, k), want, rtol=1e-8, atol=0)


def test_synthetic_tasks_optimal_feature_reaches_sum_of_squared_singular_values():
    """Paper section 5.1 setting: random stochastic P(Y|X); samples realising P exactly; the
    features f_i(x) = phi_i(x) / sqrt(P_X(x)) from the DTM's right singular vectors."""
    rng = np.random.default_rng(1)
    nx, ny = 12, 4
    counts = rng.integers(1, 30, size=(nx, ny))  # integer counts: the empirical pmf is exact
    P = torch.from_numpy(counts / counts.sum())
    x = np.repeat(np.repeat(np.arange(nx), ny), counts.ravel())
    y = np.repeat(np.tile(np.arange(ny), nx), counts.ravel())
    _, s, vh = torch.linalg.svd(dtm(P))
    for k in (1, 2, 3):
        f = (vh[:k].T / P.sum(1).sqrt()[:, None])[torch.from_numpy(x)]
        h = h_score(f, torch.from_numpy(y))
        torch.testing.assert_close(h, (s[:k] ** 2).sum(), rtol=1e-10, atol=0)
    torch.testing.assert_close(optimal_h_score(P), (s[:3] ** 2).sum(), rtol=1e-10, atol=0)


def test_transferability_and_rank_sources():
    f, y = problem(300, 6, 4, seed=4)
    noise = torch.randn(300, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    cands = {"good": f, "mixed": 0.5 * f + noise, "bad": noise}
    ranked = rank_sources(cands, y)
    assert [k for k, _ in ranked] == ["good", "mixed", "bad"]
    for name, score in ranked:
        assert score == pytest.approx(float(h_score(cands[name], y)), rel=1e-12)
    mixed_shapes = rank_sources({"a": f, "b": f[:, :3]}, y)
    assert mixed_shapes[0][0] == "a" and mixed_shapes[0][1] >= mixed_shapes[1][1]
    assert float(transferability(f, y, f)) == pytest.approx(1.0, rel=1e-12)
    t = float(transferability(0.5 * f + noise, y, f))
    assert 0 < t < 1


def test_quantize_label_maps_recovers_palette():
    gen = torch.Generator().manual_seed(0)
    palette = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    idx = torch.randint(0, 3, (20, 30), generator=gen)
    maps = palette[idx] + 0.01 * torch.randn(20, 30, 3, generator=gen)
    lab = quantize_label_maps(maps, k=3)
    assert lab.shape == (20, 30) and lab.dtype == torch.int64
    # the clusters are the palette colours up to renaming
    pairs = set(zip(idx.flatten().tolist(), lab.flatten().tolist()))
    assert len(pairs) == 3
    gray = quantize_label_maps(torch.rand(5, 8, generator=gen), k=4)
    assert gray.shape == (5, 8) and int(gray.max()) < 4


def test_transferability_matrix_and_clusters():
    f, y = problem(200, 5, 3, seed=6)
    gen = torch.Generator().manual_seed(7)
    g = torch.randn(200, 5, generator=gen, dtype=torch.float64)
    y2 = (g[:, 0] > 0).long() + 2 * (g[:, 1] > 0).long()
    maps = torch.stack([y, y, torch.randint(0, 3, (200,), generator=gen)], 1)
    M = transferability_matrix({"f": f, "g": g}, {"y": y, "y_copy": y.clone(), "y2": y2,
                                                  "dense": maps})
    assert M.shape == (2, 4)
    assert float(M[0, 0]) == pytest.approx(float(h_score(f, y)), rel=1e-12)
    assert float(M[1, 2]) == pytest.approx(float(h_score(g, y2)), rel=1e-12)
    assert float(M[0, 3]) == pytest.approx(float(pixelwise_h_score(f, maps, 3).mean()),
                                           rel=1e-12)
    groups, Z = cluster_tasks(M[:, :3], 2)
    assert groups[0] == groups[1] != groups[2]
    assert Z.shape == (2, 4)


def test_soft_hgr_optimum_is_half_the_h_score():
    f, y = problem(120, 4, 3, seed=8)
    fc = f - f.mean(0)
    cov = fc.T @ fc / len(f)
    means = torch.stack([fc[y == c].mean(0) for c in range(3)])
    g_star = torch.linalg.solve(cov, means.T).T  # argmax_g of eq. 3 for fixed f
    torch.testing.assert_close(soft_hgr(f, g_star[y]), h_score(f, y) / 2, rtol=1e-10, atol=0)
    # and training the label table of the module reaches it
    loss = HScore(num_classes=3, dim=4).double()
    opt = torch.optim.LBFGS(loss.parameters(), max_iter=200, tolerance_grad=1e-12,
                            tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        value = loss(f, y)
        value.backward()
        return value
    opt.step(closure)
    torch.testing.assert_close(-loss(f, y).detach(), h_score(f, y) / 2, rtol=1e-7, atol=0)
    # g_star is the best label table g(y) (not the best per-row g): perturb the table, seeded
    gen = torch.Generator().manual_seed(0)
    perturbed = (g_star + 0.1 * torch.randn(3, 4, generator=gen, dtype=torch.float64))[y]
    assert soft_hgr(f, perturbed) < soft_hgr(f, g_star[y])


def test_soft_hgr_gradcheck_and_errors():
    gen = torch.Generator().manual_seed(9)
    f = torch.randn(10, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    g = torch.randn(10, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(soft_hgr, (f, g))
    assert torch.autograd.gradcheck(lambda a, b: HScore()(a, b), (f, g))
    with pytest.raises(ValueError, match="one shape"):
        soft_hgr(f, g[:, :2])
    with pytest.raises(ValueError, match="num_classes"):
        HScore()(f, torch.zeros(10, dtype=torch.long))


def _soft_hgr_expression(f, g):
    """Eq. 3 written out, differentiated by autograd (the independent check)."""
    f, g = f - f.mean(0), g - g.mean(0)
    n = f.shape[0]
    return (f * g).sum(1).mean() - 0.5 * ((f.T @ f / n) * (g.T @ g / n)).sum()


@pytest.mark.parametrize(("n", "k", "strided", "needs"), [
    (1, 3, False, (True, True)), (13, 7, False, (True, True)), (31, 5, True, (True, True)),
    (16, 4, False, (True, False)), (17, 1, False, (False, True))])
def test_soft_hgr_closed_form_gradient_equals_autograd(n, k, strided, needs):
    """The value and the closed-form gradients equal autograd's of the written-out eq. 3
    (n = 1, prime sizes, non-contiguous inputs, one input without gradient)."""
    gen = torch.Generator().manual_seed(n)
    width = 2 * k if strided else k
    f0 = torch.randn(n, width, generator=gen, dtype=torch.float64)
    g0 = torch.randn(n, width, generator=gen, dtype=torch.float64) + f0
    got, want = [], []
    for fn, out in ((soft_hgr, got), (_soft_hgr_expression, want)):
        fw, gw = f0.clone().requires_grad_(needs[0]), g0.clone().requires_grad_(needs[1])
        f, g = (fw[:, ::2], gw[:, ::2]) if strided else (fw, gw)
        assert f.is_contiguous() != strided
        value = fn(f, g)
        value.backward(torch.tensor(0.7, dtype=torch.float64))
        out += [value.detach(), fw.grad, gw.grad]
    for x, y in zip(got, want, strict=True):
        if y is None:
            assert x is None
        else:
            torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-14)


def test_cli_rank_and_cluster(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # short relative paths: the table does not wrap them
    tmp_path = tmp_path.relative_to(tmp_path)
    f, y = problem(150, 4, 3, seed=10)
    noise = torch.randn(150, 4, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    np.save(tmp_path / "good.npy", f.numpy())
    np.save(tmp_path / "bad.npy", noise.numpy())
    np.save(tmp_path / "y.npy", y.numpy())
    np.save(tmp_path / "y2.npy", (noise[:, 0] > 0).long().numpy())
    runner = CliRunner()
    res = runner.invoke(app, ["hscore", "rank", "--features", str(tmp_path / "bad.npy"),
                              str(tmp_path / "good.npy"), "--labels", str(tmp_path / "y.npy")])
    assert res.exit_code == 0, res.output
    assert res.output.index("good.npy") < res.output.index("bad.npy")
    score = float(re.search(r"good\.npy.*?│\s+([\d.]+)", res.output, re.DOTALL).group(1))
    assert score == pytest.approx(float(h_score(f, y)), rel=1e-5)
    png = tmp_path / "tree.png"
    res = runner.invoke(app, ["hscore", "cluster", "--features", str(tmp_path / "good.npy"),
                              "--features", str(tmp_path / "bad.npy"),
                              "--targets", str(tmp_path / "y.npy"),
                              "--targets", str(tmp_path / "y2.npy"), "--dendrogram", str(png)])
    assert res.exit_code == 0, res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = runner.invoke(app, ["hscore", "rank", "--features", str(tmp_path / "good.npy"),
                              "--labels", str(tmp_path / "y.npy"), "--shrinkage", "lots"])
    assert res.exit_code != 0 and "shrinkage" in res.output


def test_demo_quick_correlates_h_score_with_accuracy():
    from rich.console import Console

    from pytransfer.methods.hscore import run_demo

    console = Console(record=True, width=120)
    out = run_demo(console, quick=True)
    assert out["sources"] >= 0.8 and out["layers"] >= 0.5
    assert "Spearman" in console.export_text()

"""H-score layer choice and source selection ("An Information-theoretic Metric of
Transferability for Task Transfer Learning", section 5.1): does the H-score rank features by
the accuracy that transfer actually reaches?

1. Layers: an MLP trained on digits 0-4; the features of each layer (at three points of
   training) are scored on the target task, digits 5-9, and a linear classifier is trained on
   each frozen feature set.
2. Synthetic tasks: discrete X, a random stochastic P(Y_T | X); sources mix P(Y_T | X) with
   random tasks; each source's feature is its optimal 2-D feature (DTM singular vectors,
   section 2.2); transferability = H_T(f_S) / H_T(f_T,opt) with the optimum by ACE.
Both report the Spearman correlation between H-score and transfer accuracy.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression

from pytransfer.data import digits_transfer
from pytransfer.hscore import h_score, optimal_h_score
from pytransfer.hscore.ace import dtm
from pytransfer.methods._trainer import StepContext, Trainer


def _linear_transfer_accuracy(ftr, ytr, fte, yte) -> float:
    mu, sd = ftr.mean(0), ftr.std(0) + 1e-8
    clf = LogisticRegression(max_iter=500).fit((ftr - mu) / sd, ytr)
    return float(clf.score((fte - mu) / sd, yte))


def layer_candidates(quick: bool) -> tuple[dict, torch.Tensor, dict, torch.Tensor]:
    """Features of each MLP layer at several training steps (the shared trainer, full-batch
    Adam on the source), for target train and test."""
    data = digits_transfer(target_per_class=50, seed=0)
    torch.manual_seed(0)
    widths = (64, 48, 32, 24)
    layers = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in itertools.pairwise(widths))
    net = torch.nn.ModuleDict({"layers": layers, "head": torch.nn.Linear(widths[-1], 5)})

    def embed(x):
        out = {"input": x}
        for i, layer in enumerate(layers):
            x = torch.relu(layer(x))
            out[f"layer {i + 1}"] = x
        return out

    def step(ctx: StepContext):
        b = ctx.batch("source", len(data.xs), len(data.xs))
        logits = net["head"](embed(data.xs[b.idx])[f"layer {len(layers)}"])
        ce = torch.nn.functional.cross_entropy(logits, data.ys[b.idx], reduction="sum") / b.total
        return ce, {}

    checkpoints = (0, 10, 150) if quick else (0, 10, 40, 300)
    train, test = {}, {}

    def snapshot(step, total=None, record=None):
        if step in checkpoints:
            with torch.no_grad():
                for store, x in ((train, data.xt_train), (test, data.xt_test)):
                    for name, f in embed(x).items():
                        if name != "input":
                            store[f"{name} @ step {step}"] = f
                        elif step == 0:
                            store[name] = f

    snapshot(0)
    Trainer(net, torch.optim.Adam(net.parameters(), lr=3e-3), step, steps=checkpoints[-1],
            method="hscore-layers", log_every=checkpoints[-1]).fit(progress=snapshot)
    return train, data.yt_train, test, data.yt_test


def synthetic_sources(n_sources: int, n: int, seed: int = 0):
    """P(X, Y_T) and sources P(Y_S | X) = a P(Y_T | X) perm + (1 - a) Q_s; 2-D optimal
    source features; samples for train and test."""
    rng = np.random.default_rng(seed)
    nx, ny, k = 40, 5, 2
    px = rng.dirichlet(np.full(nx, 5.0))
    pyx = rng.dirichlet(np.full(ny, 0.3), size=nx)  # P(Y_T | X), fairly informative
    P_t = torch.from_numpy(px[:, None] * pyx)
    x = rng.choice(nx, size=2 * n, p=px)
    y = np.array([rng.choice(ny, p=pyx[i]) for i in x])
    feats = {}
    for s, a in enumerate(np.linspace(0.0, 1.0, n_sources)):
        q = rng.dirichlet(np.full(ny, 0.3), size=nx)
        ps = a * pyx[:, rng.permutation(ny)] + (1 - a) * q
        _, _, vh = torch.linalg.svd(dtm(torch.from_numpy(px[:, None] * ps)))
        f = (vh[:k].T / torch.from_numpy(px).sqrt()[:, None])  # f_i(x) = phi_i(x)/sqrt(P_X)
        feats[f"source {s} (a={a:.2f})"] = f[torch.from_numpy(x)]
    y = torch.from_numpy(y)
    return P_t, k, feats, y, n


def run_demo(console: Console, quick: bool = False) -> dict:
    """Print both tables; returns the two Spearman correlations (``layers``, ``sources``),
    the table rows (``layer_rows``, ``source_rows``) and ``h_opt``."""
    out: dict = {"layer_rows": [], "source_rows": []}
    train, ytr, test, yte = layer_candidates(quick)
    table = Table(title="Layer choice: MLP trained on digits 0-4, target digits 5-9")
    for col in ("features", "d", "H-score (Ledoit-Wolf)", "linear transfer accuracy"):
        table.add_column(col, justify="left" if col == "features" else "right")
    hs, accs = [], []
    for name in train:
        h = float(h_score(train[name], ytr, num_classes=5, shrinkage="ledoit-wolf"))
        acc = _linear_transfer_accuracy(train[name].numpy(), ytr.numpy(), test[name].numpy(),
                                        yte.numpy())
        hs.append(h)
        accs.append(acc)
        table.add_row(name, str(train[name].shape[1]), f"{h:.3f}", f"{acc:.3f}")
        out["layer_rows"].append({"features": name, "d": train[name].shape[1], "h_score": h,
                                  "accuracy": acc})
    out["layers"] = float(spearmanr(hs, accs).statistic)
    console.print(table)
    console.print(f"Spearman(H-score, accuracy) over {len(hs)} layer features: "
                  f"{out['layers']:.3f}")

    P_t, k, feats, y, n = synthetic_sources(6 if quick else 10, 1000 if quick else 3000)
    h_opt = float(optimal_h_score(P_t, k))
    table = Table(title=f"Source selection: synthetic discrete tasks (|X|=40, |Y|=5, k={k}; "
                        f"H_T(f_T,opt) = {h_opt:.3f} by ACE)")
    for col in ("source", "H-score", "transferability", "linear transfer accuracy"):
        table.add_column(col, justify="left" if col == "source" else "right")
    hs, accs = [], []
    for name, f in feats.items():
        h = float(h_score(f[:n], y[:n], num_classes=5))
        acc = _linear_transfer_accuracy(f[:n].numpy(), y[:n].numpy(), f[n:].numpy(),
                                        y[n:].numpy())
        hs.append(h)
        accs.append(acc)
        table.add_row(name, f"{h:.4f}", f"{h / h_opt:.3f}", f"{acc:.3f}")
        out["source_rows"].append({"source": name, "h_score": h, "transferability": h / h_opt,
                                   "accuracy": acc})
    out["h_opt"] = h_opt
    out["sources"] = float(spearmanr(hs, accs).statistic)
    console.print(table)
    console.print(f"Spearman(H-score, accuracy) over {len(hs)} sources: {out['sources']:.3f}")
    return out

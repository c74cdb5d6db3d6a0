"""JTLN: joint transfer learning with an optimal-transport loss (Lu, Chen, Saidi; Algorithm 1).

A shared feature extractor feeds a source head (Ls classes) and a target head (Lt classes).
The loss is the source and target cross-entropies (eq. 2-4; the paper's eq. 4 writes the
source term twice, the second is the target term) plus ``alpha`` times the OT loss between
the two heads' softmax outputs on the same inputs (eq. 7-11), with a class-pair cost matrix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from pytransfer.mmd import class_pair_mmd
from pytransfer.nn import OTLoss


def mmd_class_cost(xs: torch.Tensor, ys: torch.Tensor, xt: torch.Tensor, yt: torch.Tensor,
                   num_source: int, num_target: int) -> torch.Tensor:
    """(Ls, Lt) MK-MMD between every source and target class cloud (eq. 12-14), scaled to
    max 1 (the OT loss's eps is then relative to the cost scale)."""
    cost = class_pair_mmd(xs.double(), ys, xt.double(), yt, num_source_classes=num_source,
                          num_target_classes=num_target).to(xs.dtype)
    return cost / cost.abs().max()


class JTLN(nn.Module):
    def __init__(self, d_in: int, num_source: int, num_target: int, hidden: int = 64) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(),
                                      nn.Linear(hidden, hidden), nn.ReLU())
        self.source_head = nn.Linear(hidden, num_source)
        self.target_head = nn.Linear(hidden, num_target)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)
        return self.source_head(h), self.target_head(h)


@dataclass
class JTLNConfig:
    steps: int = 300
    lr: float = 1e-2
    alpha: float = 0.1  # weight of the OT loss (0: the "joint training without OT" baseline)
    eps: float = 0.1  # entropic regularisation, the paper's 1/lambda
    batch: int = 128
    seed: int = 0
    checkpoint: str | None = None  # path: saved every `checkpoint_every` steps, resumed if present
    checkpoint_every: int = 100


def train_jtln(model: JTLN, cost: torch.Tensor, xs, ys, xt, yt, x_unlabelled,
               cfg: JTLNConfig, progress=None) -> JTLN:
    """Algorithm 1 with Adam; resumes from ``cfg.checkpoint`` when the file exists."""
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    ot_loss = OTLoss(cost, eps=cfg.eps, max_iter=100)
    ce = nn.CrossEntropyLoss()
    start = 0
    if cfg.checkpoint and os.path.exists(cfg.checkpoint):
        state = torch.load(cfg.checkpoint, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        start = state["step"]
    x_ot = torch.cat([xs, x_unlabelled])
    for step in range(start, cfg.steps):
        i_s = torch.randint(len(xs), (cfg.batch,), generator=gen)
        i_t = torch.randint(len(xt), (min(cfg.batch, len(xt)),), generator=gen)
        i_u = torch.randint(len(x_ot), (cfg.batch,), generator=gen)
        src_logits, _ = model(xs[i_s])
        _, tgt_logits = model(xt[i_t])
        loss = ce(src_logits, ys[i_s]) + ce(tgt_logits, yt[i_t])
        if cfg.alpha > 0:
            s_u, t_u = model(x_ot[i_u])
            loss = loss + cfg.alpha * ot_loss(s_u.softmax(-1), t_u.softmax(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if cfg.checkpoint and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps):
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                        "gen": gen.get_state(), "step": step + 1}, cfg.checkpoint)
        if progress is not None:
            progress()
    return model


@torch.no_grad()
def target_accuracy(model: JTLN, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x)[1].argmax(-1) == y).float().mean())

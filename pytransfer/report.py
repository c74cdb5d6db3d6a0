"""PNG plots of a process record (JSONL, one object a step with t, R, D, C): the
rate-distortion plane (the paper's Fig. 1, 3, 5) and the classification loss C over time; the
dendrogram of an H-score task clustering. matplotlib's backend is the caller's choice (the CLI
picks Agg)."""

from __future__ import annotations

import json
from pathlib import Path


def read_record(path: str | Path) -> list[dict]:
    """The steps of a JSONL record."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_record(record: str | Path | list[dict], out: str | Path,
                stem: str = "process") -> tuple[Path, Path]:
    """Writes ``<stem>_rd.png`` (D against R, points coloured by t) and ``<stem>_C.png`` (C
    against t, with lambda and gamma on a second axis) into ``out``; returns both paths."""
    import matplotlib.pyplot as plt

    recs = read_record(record) if isinstance(record, (str, Path)) else record
    if not recs:
        raise ValueError("the record has no steps")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t = [r["t"] for r in recs]
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot([r["R"] for r in recs], [r["D"] for r in recs], color="0.7", zorder=1)
    pts = ax.scatter([r["R"] for r in recs], [r["D"] for r in recs], c=t, cmap="viridis",
                     zorder=2)
    fig.colorbar(pts, ax=ax, label="t")
    ax.set_xlabel("rate R")
    ax.set_ylabel("distortion D")
    ax.set_title(f"{stem}: R-D plane")
    fig.tight_layout()
    rd = out / f"{stem}_rd.png"
    fig.savefig(rd, dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(t, [r["C"] for r in recs], "o-", color="tab:red", label="C")
    ax.set_xlabel("t")
    ax.set_ylabel("classification loss C")
    ax2 = ax.twinx()
    ax2.plot(t, [r["lam"] for r in recs], "--", color="tab:blue", label="lambda")
    ax2.plot(t, [r["gamma"] for r in recs], ":", color="tab:green", label="gamma")
    ax2.set_ylabel("lambda, gamma")
    fig.legend(loc="lower right", fontsize=8, bbox_to_anchor=(0.85, 0.12))
    ax.set_title(f"{stem}: C over time")
    fig.tight_layout()
    c = out / f"{stem}_C.png"
    fig.savefig(c, dpi=100)
    plt.close(fig)
    return rd, c


def plot_dendrogram(linkage, labels: list[str], path: str | Path) -> Path:
    """The dendrogram of a scipy linkage (H-score task clustering) as a PNG at ``path``."""
    import matplotlib.pyplot as plt
    from scipy.cluster.hierarchy import dendrogram

    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(labels) + 2), 3.5))
    dendrogram(linkage, labels=labels, ax=ax)
    ax.set_ylabel("distance of normalised H-score vectors")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)

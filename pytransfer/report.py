"""PNG plots of a process record (JSONL, one object a step with t, R, D, C): the
rate-distortion plane (the paper's Fig. 1, 3, 5) and the classification loss C over time."""

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
    import matplotlib

    matplotlib.use("Agg")
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


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A GitHub markdown table (first column left-aligned, the others right-aligned)."""
    lines = ["| " + " | ".join(header) + " |",
             "| --- |" + " ---: |" * (len(header) - 1)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def accuracy_summary(records: list[dict]) -> dict[tuple[str, str, int], tuple[float, float, int]]:
    """(task, row, labels) -> (mean, std (population), number of seeds) of ``test_acc``."""
    import numpy as np

    groups: dict[tuple[str, str, int], list[float]] = {}
    for r in records:
        groups.setdefault((r["task"], r["row"], r["labels"]), []).append(r["test_acc"])
    return {k: (float(np.mean(v)), float(np.std(v)), len(v)) for k, v in groups.items()}


def accuracy_tables(records: list[dict]) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Per task: (header, rows) with one row per method and a ``mean ± std`` column per label
    count; the best mean of each column in bold."""
    summary = accuracy_summary(records)
    out = {}
    for task in dict.fromkeys(r["task"] for r in records):
        rows = list(dict.fromkeys(r["row"] for r in records if r["task"] == task))
        labels = sorted({r["labels"] for r in records if r["task"] == task})
        best = {n: max(summary[(task, row, n)][0] for row in rows) for n in labels}
        body = []
        for row in rows:
            cells = []
            for n in labels:
                m, s, _ = summary[(task, row, n)]
                cell = f"{m:.3f} ± {s:.3f}"
                cells.append(f"**{cell}**" if m == best[n] else cell)
            body.append([row, *cells])
        out[task] = (["method", *[f"{n} labels/class" for n in labels]], body)
    return out


def plot_accuracy(records: list[dict], out: str | Path,
                  name: str = "jtln_accuracy.png") -> Path:
    """Target test accuracy against labelled samples per class, mean ± std over seeds (error
    bars), one panel per task, one line per method."""
    import matplotlib.pyplot as plt

    summary = accuracy_summary(records)
    tasks = list(dict.fromkeys(r["task"] for r in records))
    rows = list(dict.fromkeys(r["row"] for r in records))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        labels = sorted({r["labels"] for r in records if r["task"] == task})
        for i, row in enumerate(rows):
            stats = [summary[(task, row, n)] for n in labels]
            shift = 1 + 0.025 * (i - (len(rows) - 1) / 2)  # spread the error bars apart
            ax.errorbar([n * shift for n in labels], [s[0] for s in stats],
                        yerr=[s[1] for s in stats], marker="o", capsize=3, label=row)
        seeds = max(summary[(task, rows[0], n)][2] for n in labels)
        ax.set_xscale("log")
        ax.set_xticks(labels, [str(n) for n in labels])
        ax.minorticks_off()
        ax.set_xlabel("labelled target samples per class")
        ax.set_ylabel("target test accuracy")
        ax.set_title(f"{task} ({seeds} seeds, mean ± std)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = Path(out) / name
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curves(records: list[dict], out: str | Path, labels: int | None = None,
                name: str = "jtln_curves.png") -> Path:
    """Training curves at one label count (default the smallest): training loss and target
    test accuracy against the step, mean over seeds; one row of panels per task."""
    import matplotlib.pyplot as plt
    import numpy as np

    tasks = list(dict.fromkeys(r["task"] for r in records))
    rows = list(dict.fromkeys(r["row"] for r in records))
    n = min(r["labels"] for r in records) if labels is None else labels
    fig, axes = plt.subplots(len(tasks), 2, figsize=(11, 3.6 * len(tasks)), squeeze=False)
    for (ax_loss, ax_acc), task in zip(axes, tasks):
        for row in rows:
            runs = [r["curve"] for r in records
                    if r["task"] == task and r["row"] == row and r["labels"] == n]
            if not runs:
                continue
            steps = [m["step"] for m in runs[0]]
            loss = np.mean([[m["loss"] for m in c] for c in runs], axis=0)
            line, = ax_loss.plot(steps, loss, label=row)
            acc = [[(m["step"], m["test_acc"]) for m in c if "test_acc" in m] for c in runs]
            ax_acc.plot([s for s, _ in acc[0]], np.mean([[a for _, a in c] for c in acc], 0),
                        marker=".", color=line.get_color(), label=row)
        ax_loss.set(xlabel="step", ylabel="training loss (each method's own objective)",
                    title=f"{task}, {n} labels/class: training loss (mean over seeds)")
        ax_acc.set(xlabel="step", ylabel="target test accuracy",
                   title=f"{task}, {n} labels/class: test accuracy (mean over seeds)")
        for ax in (ax_loss, ax_acc):
            ax.grid(alpha=0.3)
    axes[0][1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = Path(out) / name
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def paired_differences(records: list[dict], row: str, baseline: str
                       ) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Per task: (header, rows) of ``row`` minus ``baseline`` test accuracy paired by seed
    (same split and initialisation): mean ± std of the differences and the seeds where
    ``row`` is higher, one row per label count."""
    import numpy as np

    acc = {(r["task"], r["row"], r["labels"], r["seed"]): r["test_acc"] for r in records}
    out = {}
    for task in dict.fromkeys(r["task"] for r in records):
        body = []
        for n in sorted({r["labels"] for r in records if r["task"] == task}):
            seeds = sorted(s for (t, w, m, s) in acc if (t, w, m) == (task, row, n)
                           and (task, baseline, n, s) in acc)
            d = np.array([acc[(task, row, n, s)] - acc[(task, baseline, n, s)] for s in seeds])
            body.append([str(n), f"{d.mean():+.3f} ± {d.std():.3f}",
                         f"{int((d > 0).sum())}/{len(d)}"])
        out[task] = (["labels/class", f"{row} − {baseline}", "seeds higher"], body)
    return out


def plot_rd_plane(records: dict[str, list[dict]], out: str | Path,
                  name: str = "free_energy_rd.png") -> Path:
    """Free-energy processes in the rate-distortion plane: D against R, one line per process
    (e.g. the exact and practical iso-classification variants), t marked at both ends."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    starts = set()
    for label, recs in records.items():
        R, D = [r["R"] for r in recs], [r["D"] for r in recs]
        line, = ax.plot(R, D, "o-", ms=4, label=label)
        ends = [(recs[-1]["t"], R[-1], D[-1])]
        if (R[0], D[0]) not in starts:  # processes from one model share their start
            starts.add((R[0], D[0]))
            ends.append((recs[0]["t"], R[0], D[0]))
        for t, r, d in ends:
            ax.annotate(f"t={t:g}", (r, d), textcoords="offset points", xytext=(6, 4),
                        fontsize=8, color=line.get_color())
    ax.set(xlabel="rate R", ylabel="distortion D",
           title="free-energy iso-classification: R-D plane")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(out) / name
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

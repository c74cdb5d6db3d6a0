"""PNGs of a benchmark run: time against problem size per op, the roofline, the ratios.
matplotlib is imported inside the functions; the caller chooses the backend."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

BOUND_COLOURS = {"exp": "tab:orange", "GEMM": "tab:blue", "memory": "tab:green"}


def _compact(x: float) -> str:
    """A tick label short enough that neighbours a factor 3 apart do not overlap: 3200,
    220k, 8.8M."""
    for above, unit, suffix in ((1e9, 1e9, "G"), (1e6, 1e6, "M"), (1e4, 1e3, "k")):
        if x >= above:
            return f"{x / unit:.3g}{suffix}"
    return f"{x:g}"


def scaling(records: list[dict], out: Path) -> list[Path]:
    """One PNG per op, ``scaling_<op>.png`` (see :func:`scaling_figure`)."""
    import matplotlib.pyplot as plt

    paths = []
    by_op: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_op[r["op"]].append(r)
    for op, recs in by_op.items():
        fig = scaling_figure(op, recs)
        path = out / f"scaling_{op}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def scaling_figure(op: str, records: list[dict]):
    """Log-log time against problem size for one op: one panel per family, one line per
    implementation (the subject drawn thick), the sizes as x ticks and each panel's legend
    below it, clear of the data."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, NullLocator

    families: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        families[r["family"]].append(r)
    n = len(families)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.8 * rows), squeeze=False,
                             layout="constrained")
    for ax, (family, recs) in zip(axes.flat, families.items()):
        recs = sorted(recs, key=lambda r: r["size"])
        labels = list(dict.fromkeys(k for r in recs for k in r["times_s"]))
        for label in labels:
            pts = [(r["size"], r["times_s"][label]) for r in recs if label in r["times_s"]]
            subject = label == recs[0]["subject"]
            ax.plot(*zip(*pts), marker="o", lw=2.8 if subject else 1.3,
                    ls="-" if subject or label in recs[0]["anchors"] else "--",
                    label=label + (" (subject)" if subject else ""))
        ax.set_xscale("log")
        ax.set_yscale("log")
        sizes = [r["size"] for r in recs]
        ax.set_xticks(sizes, [_compact(x) for x in sizes])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        if len(sizes) == 1:
            ax.set_xlim(sizes[0] / 2, sizes[0] * 2)
        ax.set_xlabel(recs[0]["size_name"])
        ax.set_ylabel("time (s)")
        ax.set_title(family, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=2,
                  frameon=False)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(f"{op}: time against problem size (log-log)")
    return fig


def _largest(records: list[dict]) -> list[dict]:
    """The largest size of every family that has a roofline."""
    best: dict[tuple[str, str], dict] = {}
    for r in records:
        key = (r["op"], r["family"])
        if r["roofline"] and (key not in best or r["size"] > best[key]["size"]):
            best[key] = r
    return list(best.values())


def roofline(records: list[dict], peaks: dict[str, float], out: Path) -> Path | None:
    """``roofline.png``: left, achieved GFLOP/s against arithmetic intensity under the GEMM
    and memory ceilings; right, each kernel's fraction of the bound that applies to it."""
    import matplotlib.pyplot as plt

    recs = _largest(records)
    if not recs:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, max(4.5, 0.34 * len(recs) + 1.5)),
                                      gridspec_kw={"width_ratios": [1, 1.15]})
    flops, bw = peaks["flop_per_s"] / 1e9, peaks["bytes_per_s"] / 1e9
    found = [r["roofline"]["intensity"] for r in recs if r["roofline"]["intensity"]]
    lo = math.floor(math.log10(min(found, default=1.0))) - 1
    hi = max(math.ceil(math.log10(max(found, default=1.0))) + 1, math.ceil(
        math.log10(flops / bw)) + 1)
    xs = [10 ** (lo + k * (hi - lo) / 100) for k in range(101)]
    left.plot(xs, [min(flops, bw * x) for x in xs], color="k", lw=2,
              label=f"roofline: {flops:.1f} GFLOP/s GEMM, {bw:.1f} GB/s copy")
    notes = []  # each point is labelled with its bar's number on the right
    for i, r in enumerate(recs, 1):
        rl = r["roofline"]
        if rl["intensity"] and rl["flop_per_s"]:
            left.scatter(rl["intensity"], rl["flop_per_s"] / 1e9, s=40,
                         color=BOUND_COLOURS[rl["bound"]], zorder=3)
            notes.append(left.annotate(str(i), (rl["intensity"], rl["flop_per_s"] / 1e9),
                                       fontsize=7.5, xytext=(5, 2), textcoords="offset points"))
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("arithmetic intensity (flop / byte)")
    left.set_ylabel("achieved GFLOP/s")
    vexp = peaks.get("exp_vexp_per_s", 0.0) >= peaks["exp_per_s"]
    left.set_title(f"exp ceiling (not drawn): {peaks['exp_per_s'] / 1e9:.2f} G exp/s, "
                   + ("the kernels' vectorised exp" if vexp else "torch.exp")
                   + (f" (torch.exp {peaks['exp_torch_per_s'] / 1e9:.2f})" if vexp else ""),
                   fontsize=9)
    left.grid(True, which="both", alpha=0.3)
    for bound, colour in BOUND_COLOURS.items():
        left.scatter([], [], color=colour, label=f"bound: {bound}")
    left.legend(fontsize=7, loc="lower right")
    names = [f"{r['op']}: {r['family']}, {r['size_name']}={r['size']:g}  ({i})"
             for i, r in enumerate(recs, 1)]
    fracs = [r["roofline"]["fraction"] for r in recs]
    right.barh(range(len(recs)), [100 * f for f in fracs],
               color=[BOUND_COLOURS[r["roofline"]["bound"]] for r in recs])
    for i, f in enumerate(fracs):
        right.text(100 * f, i, f" {100 * f:.1f}%", va="center", fontsize=7)
    right.set_yticks(range(len(recs)), names, fontsize=7)
    right.invert_yaxis()
    right.set_xlabel("achieved fraction of the bound that applies (%)")
    right.set_xlim(0, max(100, 115 * max(fracs)))
    right.set_title("subject kernel, largest size of each family", fontsize=9)
    fig.tight_layout(w_pad=3)
    _unclash(fig, notes)
    path = out / "roofline.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _unclash(fig, notes: list) -> None:
    """Move point labels down, one line at a time, until none overlaps an earlier one or a
    point."""
    from matplotlib.transforms import Bbox

    renderer = fig.canvas.get_renderer()
    r = 3.5 * fig.dpi / 72  # a marker's radius (s=40: about 3.2 points)
    placed = [Bbox.from_extents(x - r, y - r, x + r, y + r)
              for x, y in (n.axes.transData.transform(n.xy) for n in notes)]
    for note in notes:
        for _ in range(len(notes)):
            box = note.get_window_extent(renderer)
            if not any(box.overlaps(p) for p in placed):
                break
            dx, dy = note.xyann
            note.xyann = (dx, dy - 8)
        placed.append(note.get_window_extent(renderer))


def ratios(records: list[dict], out: Path) -> Path | None:
    """``ratios.png``: anchor time / subject time for every workload and anchor (log scale),
    the target as a red tick, 1x as a grey line."""
    import matplotlib.pyplot as plt

    rows = [(f"{r['op']}: {r['family']}, {r['size_name']}={r['size']:g}  vs {label}",
             v["ratio"], v["target"]) for r in records for label, v in r["ratios"].items()
            if v["ratio"] is not None]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(11, 0.26 * len(rows) + 1.6))
    colours = ["tab:red" if t is not None and v < t else "tab:blue" for _, v, t in rows]
    ax.barh(range(len(rows)), [v for _, v, _ in rows], color=colours)
    for i, (_, v, t) in enumerate(rows):
        ax.text(v, i, f" {v:.3g}x", va="center", fontsize=6.5)
        if t is not None:
            ax.plot([t, t], [i - 0.45, i + 0.45], color="darkred", lw=2)
    ax.axvline(1.0, color="0.5", lw=1)
    for i in range(1, len(rows)):  # a rule between ops
        if rows[i][0].split(":")[0] != rows[i - 1][0].split(":")[0]:
            ax.axhline(i - 0.5, color="0.3", lw=0.8)
    values = [v for _, v, _ in rows] + [t for _, _, t in rows if t is not None]
    ax.set_xlim(min(values) / 2, max(values) * 8)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=6.5)
    ax.set_xscale("log")
    ax.set_xlabel("anchor time / subject time (dark red tick: stated target; red bar: missed)")
    ax.invert_yaxis()
    fig.tight_layout()
    path = out / "ratios.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

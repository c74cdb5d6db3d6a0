"""``pytransfer hscore``: rank feature sets by H-score; cluster tasks with a dendrogram."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="H-score transferability (source selection, task clustering)",
                  no_args_is_help=True)
console = Console()


def _shrinkage(value: str) -> float | str | None:
    if value == "none":
        return None
    if value == "ledoit-wolf":
        return value
    try:
        return float(value)
    except ValueError:
        raise typer.BadParameter(f"--shrinkage must be none, ledoit-wolf or a float, got "
                                 f"{value!r}") from None


def _load(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.load(path))


@app.command()
def rank(
    features: Annotated[list[Path], typer.Option(help="(N, d) .npy feature arrays")],
    labels: Annotated[Path, typer.Option(help="(N,) integer target labels (.npy)")],
    more: Annotated[list[Path] | None, typer.Argument(
        help="more feature arrays after --features")] = None,
    shrinkage: Annotated[str, typer.Option(help="none | ledoit-wolf | a float in [0, 1]")] = "none",
) -> None:
    """Score each feature set on the target labels; print them best first (Definition 4)."""
    from pytransfer.hscore import rank_sources

    paths = list(features) + list(more or [])
    y = _load(labels)
    ranked = rank_sources({str(p): _load(p) for p in paths}, y, shrinkage=_shrinkage(shrinkage))
    table = Table(title=f"H-score on {labels} (N={len(y)}, C={int(y.max()) + 1})")
    for col in ("rank", "features", "H-score"):
        table.add_column(col, justify="left" if col == "features" else "right")
    for i, (name, score) in enumerate(ranked, 1):
        table.add_row(str(i), name, f"{score:.6g}")
    console.print(table)


@app.command()
def cluster(
    features: Annotated[list[Path], typer.Option(help="source (N, d) .npy arrays")],
    targets: Annotated[list[Path], typer.Option(
        help="target labels (N,) or label maps (N, P) (.npy)")],
    clusters: Annotated[int, typer.Option(help="number of task clusters")] = 2,
    dendrogram: Annotated[Path | None, typer.Option(
        help="write the dendrogram of the targets here (PNG)")] = None,
) -> None:
    """Transferability matrix sources x targets and agglomerative clustering of the targets
    by their H-score vectors (section 5.2)."""
    from pytransfer.hscore import cluster_tasks, transferability_matrix

    if len(targets) < 2:
        raise typer.BadParameter("--targets needs at least two target tasks to cluster")
    M = transferability_matrix([_load(p) for p in features], [_load(p) for p in targets])
    groups, Z = cluster_tasks(M, clusters)
    table = Table(title="H-score: sources (rows) x targets (columns)")
    table.add_column("source")
    for j, p in enumerate(targets):
        table.add_column(f"{p.stem} (cluster {groups[j]})", justify="right")
    for i, p in enumerate(features):
        table.add_row(p.stem, *(f"{float(v):.4g}" for v in M[i]))
    console.print(table)
    if dendrogram is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from scipy.cluster.hierarchy import dendrogram as draw

        fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(targets) + 2), 3.5))
        draw(Z, labels=[p.stem for p in targets], ax=ax)
        ax.set_ylabel("distance of normalised H-score vectors")
        fig.tight_layout()
        fig.savefig(dendrogram, dpi=120)
        plt.close(fig)
        console.print(f"dendrogram written to {dendrogram}")

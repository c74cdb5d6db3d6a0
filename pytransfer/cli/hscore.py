"""``pytransfer hscore``: rank feature sets by H-score; cluster tasks with a dendrogram."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console
from rich.table import Table

from pytransfer.cli._common import fail, new_file, user_errors

app = typer.Typer(help="H-score transferability (source selection, task clustering)",
                  no_args_is_help=True)
console = Console()


def _shrinkage(value: str) -> float | str | None:
    if value == "none":
        return None
    if value == "ledoit-wolf":
        return value
    try:
        s = float(value)
    except ValueError:
        s = math.nan
    if not 0 <= s <= 1:
        fail(f"--shrinkage must be none, ledoit-wolf or a float in [0, 1], got {value!r}")
    return s


def _load(path: Path) -> torch.Tensor:
    from pytransfer.data import read_npy

    return torch.from_numpy(read_npy(path))


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

    shrink = _shrinkage(shrinkage)
    paths = list(features) + list(more or [])
    with user_errors():
        y = _load(labels)
        ranked = rank_sources({str(p): _load(p) for p in paths}, y, shrinkage=shrink)
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
    clusters: Annotated[int, typer.Option(min=1, help="number of task clusters")] = 2,
    dendrogram: Annotated[Path | None, typer.Option(
        help="a new .png file for the dendrogram of the targets (a folder, or an existing file, "
             "is refused)")] = None,
) -> None:
    """Transferability matrix sources x targets and agglomerative clustering of the targets
    by their H-score vectors (section 5.2)."""
    from pytransfer.hscore import cluster_tasks, transferability_matrix

    if len(targets) < 2:
        fail("--targets needs at least two target tasks to cluster")
    if clusters > len(targets):
        fail(f"--clusters {clusters} exceeds the {len(targets)} targets")
    if dendrogram is not None:
        new_file("--dendrogram", dendrogram, ".png")
    with user_errors():
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
        from pytransfer.report import plot_dendrogram

        with user_errors():
            plot_dendrogram(Z, [p.stem for p in targets], dendrogram)
        console.print(f"dendrogram written to {dendrogram}")

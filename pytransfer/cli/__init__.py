"""Command line: one typer module per command (``pytransfer --help`` lists them)."""

from __future__ import annotations

import os

import typer

from pytransfer.cli._common import OneLineErrorGroup
from pytransfer.cli.backends import backends
from pytransfer.cli.bench import bench
from pytransfer.cli.demo import demo
from pytransfer.cli.free_energy import app as free_energy_app
from pytransfer.cli.hscore import app as hscore_app
from pytransfer.cli.jtln import jtln
from pytransfer.cli.lautum import lautum

# plots are files: the CLI (never the library) picks the Agg backend
os.environ.setdefault("MPLBACKEND", "Agg")

app = typer.Typer(help="pytransfer: fast kernels for information-theoretic transfer learning",
                  no_args_is_help=True, cls=OneLineErrorGroup)
app.command()(demo)
app.command()(backends)
app.command()(jtln)
app.command()(lautum)
app.command()(bench)
app.add_typer(hscore_app, name="hscore", help="H-score transferability: rank features/sources")
app.add_typer(free_energy_app, name="free-energy",
              help="Free-energy iso-classification and transfer processes")

__all__ = ["app"]

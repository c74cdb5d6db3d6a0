"""``python -m pytransfer`` (and ``torchrun -m pytransfer``): the command line."""

from pytransfer.cli import app

app()

"""``pytransfer backends``: every op's backends and whether they can run here."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def backends() -> None:
    """List every op's backends and whether they can run here."""
    import pytransfer

    table = Table("op", "backend", "status")
    for op, impls in pytransfer.backends().items():
        for name, status in impls.items():
            table.add_row(op, name, status)
    Console().print(table)

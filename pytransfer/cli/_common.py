"""What every command shares: user errors end in one line and exit status 2."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import typer
from typer.core import TyperGroup

USER_ERRORS = (ValueError, TypeError, OSError, KeyError)
#: click's UsageError (typer may vendor click), the base of every bad option or argument
_USAGE_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def fail(message: str) -> NoReturn:
    """Report a user error: one line on stderr, exit status 2, no traceback."""
    typer.echo(f"Error: {' '.join(message.split())}", err=True)
    raise typer.Exit(2)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the library's input errors (ValueError, TypeError, OSError, KeyError) raised
    inside the block into :func:`fail`; anything else is a bug and keeps its traceback."""
    try:
        yield
    except USER_ERRORS as exc:
        fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


@contextlib.contextmanager
def _one_line_usage_errors() -> Iterator[None]:
    try:
        yield
    except _USAGE_ERROR as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare group: its help, as click does
            raise
        fail(exc.format_message())


class OneLineErrorGroup(TyperGroup):
    """The top-level group: a bad option, a missing argument, an unknown command or an invalid
    enum choice anywhere below it is reported by :func:`fail` (one line, exit status 2)
    instead of click's usage box."""

    def make_context(self, *args, **kwargs):
        with _one_line_usage_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):
        with _one_line_usage_errors():
            return super().invoke(ctx)


def positive(option: str, value: float) -> float:
    """``value`` if finite and > 0, else :func:`fail` naming ``option``."""
    if not math.isfinite(value) or value <= 0:
        fail(f"{option} must be a finite number > 0, got {value}")
    return value


def new_file(option: str, path: Path, suffix: str) -> Path:
    """A path to create: refuses a folder, an existing file (nothing is overwritten), a missing
    parent folder or another suffix."""
    if path.is_dir():
        fail(f"{option} {path} is a folder; give the file to write, e.g. {path / ('out' + suffix)}")
    if path.exists():
        fail(f"{option} {path} already exists; choose a new name (nothing is overwritten)")
    if path.suffix.lower() != suffix:
        fail(f"{option} {path} must end in {suffix}")
    if not path.parent.is_dir():
        fail(f"{option} {path}: folder {path.parent} does not exist")
    return path

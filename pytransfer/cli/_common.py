"""What every command shares: user errors end in one line and exit status 2."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import NoReturn

import typer

USER_ERRORS = (ValueError, TypeError, OSError, KeyError)


def fail(message: str) -> NoReturn:
    """Report a user error: one line on stderr, exit status 2, no traceback."""
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(2)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the library's input errors (ValueError, TypeError, OSError, KeyError) raised
    inside the block into :func:`fail`; anything else is a bug and keeps its traceback."""
    try:
        yield
    except USER_ERRORS as exc:
        fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

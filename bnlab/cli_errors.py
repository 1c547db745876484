"""The one place where user errors become one stderr line and exit code 2."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer

from bnlab.errors import BnlabError


@contextmanager
def user_errors() -> Iterator[None]:
    try:
        yield
    except BnlabError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(code=2) from None

"""The one place where user errors become one stderr line and exit code 2."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import typer

from bnlab.errors import BnlabError


@contextmanager
def user_errors() -> Iterator[None]:
    try:
        yield
    except BnlabError as err:
        # A name or path from the user may hold a newline, another control character or a
        # Unicode line separator: the message stays one line, with them written as escapes.
        message = re.sub(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]", lambda char: repr(char.group())[1:-1], str(err))
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(code=2) from None

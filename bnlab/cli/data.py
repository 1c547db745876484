"""`bnlab data fetch|verify|where`: find, fetch and verify the datasets.

bnlab.data (numpy, torch, platformdirs) is imported inside each command so that `bnlab --help`
stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from bnlab.cli._errors import user_errors

data_app = typer.Typer(help="Find, fetch and verify datasets.", no_args_is_help=True)

# The same choices as config.DataConfig.dataset (and data.SHA256; a test keeps them equal).
Dataset = Annotated[Literal["mnist", "fashion-mnist"], typer.Option("--dataset", help="Which dataset")]
Root = Annotated[
    Path | None,
    typer.Option("--root", help="A folder of IDX files, flat or ROOT/MNIST/raw (default: $BNLAB_DATA)"),
]


@data_app.command()
def fetch(dataset: Dataset = "mnist", root: Root = None) -> None:
    """Make sure a verified copy exists, downloading it into the cache if no source has one."""
    from bnlab import data

    with user_errors():
        folder, source = data.fetch(dataset, str(root) if root else None)
    typer.echo(f"{dataset}: verified copy in {folder} ({source})")


@data_app.command()
def verify(dataset: Dataset = "mnist", root: Root = None) -> None:
    """Check each file's SHA-256 (of its decompressed bytes) against the published one; 1 if any fails."""
    from bnlab import data

    with user_errors():
        checks = data.verify(dataset, str(root) if root else None)
    for check in checks:
        if check.error:
            typer.echo(f"BAD      {check.name:24} {check.error}")
        else:
            verdict = "ok" if check.ok else "MISMATCH"
            shown = check.sha256[:16] + ("" if check.ok else f" (expected {check.expected[:16]})")
            typer.echo(f"{verdict:8} {check.name:24} {check.path}  sha256 {shown}")
    found = {check.name for check in checks}
    for name in data.FILES:
        if name not in found:
            typer.echo(f"MISSING  {name:24} raw or .gz")
    if len(found) < len(data.FILES) or not all(check.ok for check in checks):
        raise typer.Exit(code=1)


@data_app.command()
def where(dataset: Dataset = "mnist", root: Root = None) -> None:
    """List each source in the order bnlab tries it, and whether it holds all four files."""
    from bnlab import data

    with user_errors():
        checks = data.where(dataset, str(root) if root else None)
    source_width = max(len(check.source) for check in checks)
    path_width = max(len(check.path) for check in checks)
    for number, check in enumerate(checks, 1):
        counted = check.source not in ("download", "npm") and check.path != "(not set)"
        state = f"{check.found}/{len(data.FILES)} files" if counted else ""
        state += " (complete)" if check.complete else ""
        note = f"  [{check.note}]" if check.note else ""
        line = f"{number}. {check.source:{source_width}}  {check.path:{path_width}}  {state}{note}"
        typer.echo(line.rstrip())

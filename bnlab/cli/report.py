"""`bnlab report`: parse, call bnlab.report, print where the files went.

No heavy import at module level (pandas, matplotlib, scipy come with bnlab.report, inside the
command), so `bnlab --help` stays fast. bnlab/cli.py registers it: app.command("report")(report).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bnlab.cli._errors import user_errors


def report(
    path: Annotated[Path | None, typer.Argument(
        help="A sweep folder, a run folder or a folder of runs (default: $BNLAB_RUNS or ./runs)",
        metavar="PATH", show_default=False)] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", metavar="DIR", help="Folder for report.md and report.html (default: PATH itself)",
        show_default=False)] = None,
) -> None:
    """Write report.md and a self-contained report.html: spread over seeds, heatmaps, curves, failures."""
    from bnlab.records import runs_dir

    folder = path or runs_dir(None)
    with user_errors():
        from bnlab.analysis.render import write_report
        from bnlab.analysis.report import build_report

        built = build_report(folder)
        md_path, html_path = write_report(built, out or folder)
    typer.echo(f"wrote {md_path} and {html_path}")

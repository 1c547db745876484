"""`bnlab ls`'s table: a Listing of runs drawn with rich, status in colour, text never markup."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from bnlab.analysis.listing import Listing

_STYLES = {"done": "green", "diverged": "yellow", "failed": "red", "did-not-train": "yellow",
           "damaged": "bold red", "unfinished": "dim"}


def runs_table(listing: Listing) -> Table:
    frame, varied = listing.frame, listing.varied
    # Text from configs and run folders is shown as it is, never parsed as rich markup.
    table = Table(title=Text(f"{len(frame)} run(s) in {listing.path}"))
    damaged = "problem" in frame.columns and frame["problem"].notna().any()
    for header in ("name", "id", *varied, "status", "test_acc", "seconds", *(["problem"] if damaged else [])):
        table.add_column(header, justify="right" if header in ("test_acc", "seconds") else "left",
                         overflow="fold")
    for row in frame.to_dict("records"):
        test_acc = row.get("final.test_acc")
        seconds = row.get("seconds")
        cells = [_cell(row.get("name")), row["run_id"], *(_cell(row.get(field)) for field in varied)]
        table.add_row(
            *map(Text, cells), Text(row["status"], _STYLES.get(row["status"], "")),
            f"{100 * test_acc:.2f}%" if _is_number(test_acc) else "-",
            f"{seconds:.1f}" if _is_number(seconds) else "-",
            *([Text(_cell(row.get("problem")))] if damaged else []),
        )
    return table


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and value == value  # NaN from pandas means missing


def _cell(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and value != value) else str(value)

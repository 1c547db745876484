"""`bnlab ls`: runs on disk as one table. Reads only through the records module."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bnlab.config import parse_yaml_text
from bnlab.errors import ConfigError
from bnlab.records import read_runs

_SHOWN_ALIASES = {"test_acc": "final.test_acc", "val_acc": "final.val_acc", "train_loss": "final.train_loss"}


def _column(frame: Any, name: str, option: str) -> str:
    column = _SHOWN_ALIASES.get(name, name)
    if column not in frame.columns:
        allowed = ", ".join(sorted(set(frame.columns) - {"path"}))
        raise ConfigError(f"{option} {name}: no such column; allowed: {allowed}")
    return column


def filter_runs(frame: Any, where: Sequence[str]) -> Any:
    for item in where:
        name, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"--where {item!r}: expected field=value, e.g. model.bn=after")
        column = _column(frame, name.strip(), "--where")
        wanted = parse_yaml_text(text, f"--where {item!r}")
        frame = frame[frame[column].map(lambda value, wanted=wanted: value == wanted or str(value) == str(wanted))]
    return frame


def varied_fields(frame: Any) -> list[str]:
    config_columns = [c for c in frame.columns if ("." in c and not c.startswith("final.")) or c == "seed"]
    # A damaged row may have no config at all: its blanks would make every field look varied.
    readable = frame[frame["status"] != "damaged"] if "status" in frame.columns else frame
    return [c for c in config_columns if readable[c].map(repr).nunique() > 1]


def runs_table(path: Path, where: Sequence[str], sort: str | None) -> Any:
    from rich.table import Table
    from rich.text import Text

    frame = read_runs(path)
    if frame.empty:
        raise ConfigError(f"{path}: no run folders here")
    varied = [*varied_fields(frame)]
    frame = filter_runs(frame, where)
    if sort:
        frame = frame.sort_values(_column(frame, sort, "--sort"), na_position="last", kind="stable")
    # Text from configs and run folders is shown as it is, never parsed as rich markup.
    table = Table(title=Text(f"{len(frame)} run(s) in {path}"))
    damaged = "problem" in frame.columns and frame["problem"].notna().any()
    for header in ("name", "id", *varied, "status", "test_acc", "seconds", *(["problem"] if damaged else [])):
        table.add_column(header, justify="right" if header in ("test_acc", "seconds") else "left",
                         overflow="fold")
    styles = {"done": "green", "diverged": "yellow", "failed": "red", "damaged": "bold red", "unfinished": "dim"}
    for row in frame.to_dict("records"):
        test_acc = row.get("final.test_acc")
        seconds = row.get("seconds")
        cells = [_cell(row.get("name")), row["run_id"], *(_cell(row.get(field)) for field in varied)]
        table.add_row(
            *map(Text, cells), Text(row["status"], styles.get(row["status"], "")),
            f"{100 * test_acc:.2f}%" if _is_number(test_acc) else "-",
            f"{seconds:.1f}" if _is_number(seconds) else "-",
            *([Text(_cell(row.get("problem")))] if damaged else []),
        )
    return table


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and value == value  # NaN from pandas means missing


def _cell(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and value != value) else str(value)

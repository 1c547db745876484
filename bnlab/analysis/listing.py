"""`bnlab ls`: runs on disk as one table. Reads only through the records module."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Listing:
    """What `bnlab ls` shows: the runs (filtered, sorted) and the config fields that vary among
    all of them (before filtering, so a filter keeps the same columns)."""

    path: Path
    frame: Any  # records.read_runs' frame
    varied: list[str]


def read_listing(path: Path, where: Sequence[str], sort: str | None) -> Listing:
    frame = read_runs(path)
    if frame.empty:
        raise ConfigError(f"{path}: no run folders here")
    varied = varied_fields(frame)
    frame = filter_runs(frame, where)
    if sort:
        frame = frame.sort_values(_column(frame, sort, "--sort"), na_position="last", kind="stable")
    return Listing(path, frame, varied)

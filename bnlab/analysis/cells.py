"""Runs grouped into cells: the config fields that vary among them, and the runs (seeds) of each
combination of their values. The report's tables and figures are drawn from these."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bnlab.records import FinishedRun


def show(value: Any) -> str:
    """A config value for tables and labels: 0.05, 1e+06, none, [16, 8]."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "[" + ", ".join(show(item) for item in value) + "]"
    return str(value)


def sort_key(value: Any) -> tuple[int, Any]:
    if value is None:
        return (0, 0)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (1, value)
    return (2, show(value))


@dataclass(frozen=True)
class Group:
    """The runs of one dataset (or all runs): the fields that vary among them, and the cells
    (one per combination of their values, the seeds of a cell its replicates)."""

    label: str  # "" unless runs of several datasets are split
    fields: list[str]  # varied config fields, seed excluded (it is the replicate)
    cells: dict[tuple[str, ...], list[FinishedRun]]  # in sorted order of the fields' values

    def suffix(self) -> str:
        return f" ({self.label})" if self.label else ""

    def cell_label(self, key: tuple[str, ...], skip: str | None = None, short: bool = False) -> str:
        """'train.lr=0.1, model.bn=after'; short: 'lr=0.1, bn=after' (for legends)."""
        parts = [f"{name.rsplit('.', 1)[-1] if short else name}={value}"
                 for name, value in zip(self.fields, key, strict=True) if name != skip]
        return ", ".join(parts) or "all runs"


def group_runs(runs: list[FinishedRun], label: str, axes: Sequence[str]) -> Group:
    """Fields in the sweep's axis order, then in the config's; cells sorted by their values."""
    columns = [*axes, *(name for run in runs for name in run.fields)]
    columns = [name for name in dict.fromkeys(columns) if name not in ("name", "seed")]
    fields = [name for name in columns if len({show(run.fields.get(name)) for run in runs}) > 1]
    ordered = sorted(runs, key=lambda run: ([sort_key(run.fields.get(name)) for name in fields], run.fields["seed"]))
    cells: dict[tuple[str, ...], list[FinishedRun]] = {}
    for run in ordered:
        cells.setdefault(tuple(show(run.fields.get(name)) for name in fields), []).append(run)
    return Group(label, fields, cells)

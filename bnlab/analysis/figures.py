"""The report's figures: which runs to draw (from the report's cells) and the drawing, as PNG bytes.

Reads a run's epoch and probe tables through records' FinishedRun, writes nothing. Figures are drawn
on a bare matplotlib Figure (the Agg canvas, no pyplot state), so a report never needs a display
and two reports in one process share nothing. numpy/pandas/matplotlib are imported inside the
functions: `bnlab --help` never loads this module, but ruff's lazy-import rule covers it too.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bnlab.analysis.cells import Group
from bnlab.analysis.stats import summarize
from bnlab.records import DID_NOT_TRAIN, FinishedRun

DPI = 110
WIDTH_INCHES = 10.0  # the report's ~1100 px column at DPI
PANEL_INCHES = 3.3  # one curve or probe panel: three to a row
MAX_PANELS = 9  # heatmap panels per figure
_DIVERGED_FACE = "#e5e7eb"


@dataclass(frozen=True)
class Drawn:
    title: str
    png: bytes
    caption: str


@dataclass(frozen=True)
class HeatCell:
    mean: float  # final test accuracy, mean over the seeds that have one (NaN: none did)
    runs: int
    diverged: int


@dataclass(frozen=True)
class HeatPanel:
    title: str
    cells: dict[tuple[str, str], HeatCell]  # (y label, x label) -> cell


@dataclass(frozen=True)
class ProbePanel:
    title: str  # e.g. "bn after: layer 1, unit 0"
    steps: Sequence[float]
    p15: Sequence[float]
    p50: Sequence[float]
    p85: Sequence[float]


# --- what to draw ----------------------------------------------------------------------------------


def heat_axes(fields: list[str]) -> tuple[str, str] | None:
    """(rows, columns): batch size x lr when both vary, else the first two fields besides model.bn."""
    if "train.batch_size" in fields and "train.lr" in fields:
        return "train.batch_size", "train.lr"
    others = [name for name in fields if name != "model.bn"]
    if len(others) >= 2:
        return others[0], others[1]
    return (fields[0], fields[1]) if len(fields) >= 2 else None


def heatmap(group: Group) -> Drawn | None:
    """Mean final test accuracy over two fields, one panel per value of the others (model.bn first)."""
    axes = heat_axes(group.fields)
    if axes is None:
        return None
    y_field, x_field = axes
    y_at, x_at = group.fields.index(y_field), group.fields.index(x_field)
    rest = sorted((i for i in range(len(group.fields)) if i not in (y_at, x_at)),
                  key=lambda i: group.fields[i] != "model.bn")
    panels: dict[str, dict[tuple[str, str], HeatCell]] = {}
    for key, runs in group.cells.items():
        title = ", ".join(f"{group.fields[i]}={key[i]}" for i in rest) or "mean over seeds"
        mean = summarize([run.final.get("test_acc") for run in runs])["mean"]
        cell = HeatCell(mean, len(runs), sum(run.status == "diverged" for run in runs))
        panels.setdefault(title, {})[(key[y_at], key[x_at])] = cell
    y_values = list(dict.fromkeys(key[y_at] for key in group.cells))
    x_values = list(dict.fromkeys(key[x_at] for key in group.cells))
    # A panel of one cell (a ghost-BN setting run at one batch size and lr) is no map: the tables have it.
    maps = {title: cells for title, cells in panels.items() if len(cells) > 1}
    if not maps:
        return None
    shown = [HeatPanel(title, cells) for title, cells in list(maps.items())[:MAX_PANELS]]
    caption = ("Final test accuracy (%), mean over seeds. A hatched × cell: every run diverged; '× k/n': k of its "
               "n runs diverged, and the value is the mean of the rest.")
    if len(maps) > MAX_PANELS:
        caption += f" Showing {MAX_PANELS} of {len(maps)} panels; the per-cell table has them all."
    if len(maps) < len(panels):
        caption += (f" Not drawn: {len(panels) - len(maps)} setting(s) run in a single cell "
                    f"({'; '.join(title for title in panels if title not in maps)}); the per-cell table has them.")
    return Drawn(f"final test accuracy: {y_field} x {x_field}",
                 heatmap_png(shown, x_field, x_values, y_field, y_values), caption)


def _finite(value: Any, missing: float = -math.inf) -> float:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else missing


def activation_percentiles(group: Group) -> Drawn | None:
    """Per placement, a typical run of the setting a user would pick: in its cell with the highest
    mean validation accuracy, the seed with the median final test accuracy; layer 1 and the last."""
    best: dict[str, tuple[float, tuple[str, ...], list[FinishedRun]]] = {}
    for key, runs in group.cells.items():
        placement = str(runs[0].fields.get("model.bn"))
        # Runs that trained if any (scored as the comparisons score them), else ones that at least
        # recorded probes (not failed ones).
        usable = ([run for run in runs if run.status == "done"]
                  or [run for run in runs if run.status == DID_NOT_TRAIN]
                  or [run for run in runs if run.status != "failed"])
        if not usable:
            continue
        score = _finite(summarize([run.final.get("val_acc") for run in usable])["mean"])
        if placement not in best or score > best[placement][0]:
            best[placement] = (score, key, usable)
    picked: dict[str, tuple[tuple[str, ...], FinishedRun]] = {}
    for placement, (_, key, usable) in best.items():
        ranked = sorted(usable, key=lambda run: (_finite(run.final.get("test_acc")), run.fields["seed"]))
        picked[placement] = (key, ranked[(len(ranked) - 1) // 2])
    columns: list[list[ProbePanel]] = []
    used = []
    for placement, (key, run) in picked.items():
        table = run.frame("probes")
        if table.empty or not {"step", "layer", "unit", "p15", "p50", "p85"} <= set(table.columns):
            continue
        layers = sorted(table["layer"].unique())
        column = []
        for layer in dict.fromkeys([layers[0], layers[-1]]):
            part = table[table["layer"] == layer]
            unit = part["unit"].iloc[0]
            part = part[part["unit"] == unit].sort_values("step")
            column.append(ProbePanel(f"bn {placement}: layer {layer}, unit {unit}", list(part["step"]),
                                     list(part["p15"]), list(part["p50"]), list(part["p85"])))
        columns.append(column)
        used.append(f"bn {placement}: run {run.run_id} ({group.cell_label(key)}, seed {run.fields['seed']})")
    if not columns:
        return None
    blank = ProbePanel("", [], [], [], [])
    rows = max(len(column) for column in columns)
    panels = [column[row] if row < len(column) else blank for row in range(rows) for column in columns]
    caption = ("15th and 85th (dashed) and 50th (solid) percentiles of one unit's input to the nonlinearity on a "
               "fixed batch of training images, over training (Ioffe & Szegedy 2015, Fig. 1); top row: the first "
               "hidden layer, bottom row: the last. Each placement shows a typical run of the setting one would "
               "pick: in its cell with the highest mean validation accuracy, the seed with the median final test "
               "accuracy. Runs: " + "; ".join(used) + ".")
    return Drawn("input to the nonlinearity over training", probes_png(panels, len(columns)), caption)


# --- drawing ---------------------------------------------------------------------------------------


def new_figure(columns: int, rows: int, width: float = PANEL_INCHES, height: float = 3.3) -> tuple[Any, list[Any]]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width * columns, height * rows), dpi=DPI, layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    return figure, [axis for row in axes for axis in row]


def png_bytes(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def heatmap_png(panels: Sequence[HeatPanel], x_field: str, x_values: Sequence[str], y_field: str,
                y_values: Sequence[str]) -> bytes:
    return png_bytes(heatmap_figure(panels, x_field, x_values, y_field, y_values))


def heatmap_figure(panels: Sequence[HeatPanel], x_field: str, x_values: Sequence[str], y_field: str,
                   y_values: Sequence[str]) -> Any:
    """Mean final test accuracy (%) per (y, x) cell, one panel each; a cell where every run
    diverged is hatched with an ×, a cell where some did carries '× k/n' under its value."""
    import numpy as np

    # Panels wrap to the report's column (WIDTH_INCHES); the colour bar needs about 0.9 in of it.
    width = max(2.4, 0.75 + 0.55 * len(x_values))
    columns = max(1, min(len(panels), int((WIDTH_INCHES - 0.9) // width)))
    rows = math.ceil(len(panels) / columns)
    height = max(2.4, 1.3 + 0.42 * len(y_values))
    figure, axes = new_figure(columns, rows, width, height)
    finite = [cell.mean for panel in panels for cell in panel.cells.values() if math.isfinite(cell.mean)]
    high = 100 * max(finite) if finite else 100.0
    low = min(100 * min(finite) if finite else 0.0, high - 1.0)  # a flat grid still gets a colour scale
    image = None
    for axis, panel in zip(axes, panels, strict=False):
        grid = np.full((len(y_values), len(x_values)), np.nan)
        for (y, x), cell in panel.cells.items():
            grid[y_values.index(y), x_values.index(x)] = 100 * cell.mean
        image = axis.imshow(grid, cmap="viridis", vmin=low, vmax=high, aspect="auto")
        for (y, x), cell in panel.cells.items():
            row, column = y_values.index(y), x_values.index(x)
            if not math.isfinite(cell.mean):
                axis.add_patch(_hatched(column, row))
                label, size = ("×", 16) if cell.diverged else ("no\nresult", 8)
                axis.text(column, row, label, ha="center", va="center", fontsize=size, color="#374151")
                continue
            value = 100 * cell.mean
            light = (value - low) / (high - low) > 0.6  # viridis turns yellow at the top
            label = f"{value:.1f}" + (f"\n× {cell.diverged}/{cell.runs}" if cell.diverged else "")
            axis.text(column, row, label, ha="center", va="center", fontsize=9,
                      color="#111827" if light else "white")
        axis.set_xticks(range(len(x_values)), x_values)
        axis.set_yticks(range(len(y_values)), y_values)
        axis.set_xlabel(x_field)
        axis.set_ylabel(y_field if axis in axes[::columns] else "")
        # A title naming three fields is wider than its panel: wrapped, it cannot run into the next one.
        axis.set_title(textwrap.fill(panel.title, max(16, int(width * 9))), fontsize=9)
        axis.tick_params(length=0)
    for axis in axes[len(panels):]:
        axis.set_axis_off()
    if image is not None:
        figure.colorbar(image, ax=axes[: len(panels)], label="final test accuracy (%)", shrink=0.9)
    for axis in axes[: len(panels)]:
        if overlapping_x_ticks(figure, axis):  # upright labels are as wide as a cell's text height
            axis.tick_params(axis="x", labelrotation=90)
    return figure


def overlapping_x_ticks(figure: Any, axis: Any) -> bool:
    """Whether two neighbouring x tick labels of `axis` overlap as drawn (long lr values in narrow
    cells): measured on the laid-out figure, since a label's width depends on its font."""
    figure.draw_without_rendering()
    boxes = sorted((label.get_window_extent() for label in axis.get_xticklabels() if label.get_text()),
                   key=lambda box: box.x0)
    return any(left.x1 > right.x0 for left, right in zip(boxes, boxes[1:], strict=False))


def _hatched(column: int, row: int) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((column - 0.5, row - 0.5), 1, 1, facecolor=_DIVERGED_FACE, edgecolor="#9ca3af",
                     hatch="///", linewidth=0)


def probes_png(panels: Sequence[ProbePanel], columns: int) -> bytes:
    """Ioffe & Szegedy's Fig. 1(b, c): the 15th, 50th and 85th percentiles of one unit's input to
    the nonlinearity over training, one panel per placement (columns) and layer (rows)."""
    rows = math.ceil(len(panels) / columns)
    figure, axes = new_figure(columns, rows, height=2.8)
    for axis, panel in zip(axes, panels, strict=False):
        if not panel.steps:
            axis.set_axis_off()
            continue
        axis.fill_between(panel.steps, panel.p15, panel.p85, color="C0", alpha=0.15, linewidth=0)
        for values, style in ((panel.p85, "--"), (panel.p50, "-"), (panel.p15, "--")):
            axis.plot(panel.steps, values, style, color="C0", lw=1.3)
        axis.set(xlabel="step", title=panel.title)
        axis.set_ylabel("input to the nonlinearity" if axis in axes[::columns] else "")
        axis.title.set_fontsize(10)
        axis.grid(alpha=0.3)
    for axis in axes[len(panels):]:
        axis.set_axis_off()
    return png_bytes(figure)

"""The report's figures: which runs to draw (from the report's cells) and the drawing, as PNG bytes.

Reads a run's epoch and probe tables through records' FinishedRun, writes nothing. Figures are drawn
on a bare matplotlib Figure (the Agg canvas, no pyplot state), so a report never needs a display
and two reports in one process share nothing. numpy/pandas/matplotlib are imported inside the
functions: `bnlab --help` never loads this module, but ruff's lazy-import rule covers it too.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bnlab.analysis.cells import Group
from bnlab.analysis.stats import summarize
from bnlab.records import DID_NOT_TRAIN, FinishedRun

DPI = 110
WIDTH_INCHES = 10.0  # the report's ~1100 px column at DPI
PANEL_INCHES = 3.3  # one curve or probe panel: three to a row
MAX_CURVES = 8  # lines per learning-curve panel; more cells are named in the caption, not drawn
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
class Curve:
    label: str
    x: Sequence[float]  # epochs or steps (CurveSource)
    mean: Sequence[float]
    low: Sequence[float]  # the band: min over seeds at each x
    high: Sequence[float]  # max over seeds


@dataclass(frozen=True)
class CurvePanel:
    title: str
    curves: list[Curve] = field(default_factory=list)


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
    shown = [HeatPanel(title, cells) for title, cells in list(panels.items())[:MAX_PANELS]]
    caption = ("Final test accuracy (%), mean over seeds. A hatched × cell: every run diverged; '× k/n': k of its "
               "n runs diverged, and the value is the mean of the rest.")
    if len(panels) > MAX_PANELS:
        caption += f" Showing {MAX_PANELS} of {len(panels)} panels; the per-cell table has them all."
    return Drawn(f"final test accuracy: {y_field} x {x_field}",
                 heatmap_png(shown, x_field, x_values, y_field, y_values), caption)


Band = tuple[list[float], list[float], list[float], list[float]]  # x, mean, min, max over seeds


@dataclass(frozen=True)
class CurveSource:
    """Where a learning curve's points come from: a run table, its x column and the metric."""
    table: str
    x: str
    metric: str
    xlabel: str
    ylabel: str
    percent: bool


PER_EPOCH = CurveSource("epochs", "epoch", "val_acc", "epoch", "validation accuracy (%)", True)
AT_CHECKPOINTS = CurveSource("steps", "step", "val_acc", "step", "validation accuracy (%)", True)
LOGGED_LOSS = CurveSource("steps", "step", "train_loss", "step", "training loss (logged batch)", False)
FEW_EPOCHS = 4  # below this many epochs a per-epoch curve is a point or two: draw it against steps


def _band(runs: list[FinishedRun], source: CurveSource) -> Band | None:
    per_x: dict[float, list[float]] = {}
    for run in runs:
        table = run.frame(source.table)
        if source.metric not in table or source.x not in table:
            continue
        for at, value in zip(table[source.x], table[source.metric], strict=True):
            if isinstance(value, int | float) and math.isfinite(value):
                per_x.setdefault(float(at), []).append(float(value))
    if not per_x:
        return None
    xs = sorted(per_x)
    return (xs, [sum(per_x[x]) / len(per_x[x]) for x in xs],
            [min(per_x[x]) for x in xs], [max(per_x[x]) for x in xs])


def curve_source(runs: Sequence[FinishedRun]) -> CurveSource:
    """Per epoch when the runs have enough epochs; else against steps: validation accuracy at the
    checkpoints (eval.every_steps) when the runs have them, the logged training loss when not."""
    if any(len(run.frame("epochs")) >= FEW_EPOCHS for run in runs):
        return PER_EPOCH
    if any(_band([run], AT_CHECKPOINTS) is not None for run in runs):
        return AT_CHECKPOINTS
    return LOGGED_LOSS


def learning_curves(group: Group) -> Drawn | None:
    """A learning curve per cell (mean over seeds, min-max band): a panel per model.bn value (or per
    value of the first field). Validation accuracy per epoch, or against steps when runs are short
    (curve_source): a one-epoch run's per-epoch curve is a single point."""
    by = "model.bn" if "model.bn" in group.fields else group.fields[0] if len(group.fields) >= 2 else None
    source = curve_source([run for runs in group.cells.values() for run in runs])
    panels: dict[str, list[Curve]] = {}
    left_out = []
    for key, runs in group.cells.items():
        title = f"{by}={key[group.fields.index(by)]}" if by else "all runs"
        label = group.cell_label(key, skip=by, short=True)
        curves = panels.setdefault(title, [])
        band = _band(runs, source)
        if band is None:
            left_out.append(f"{label if by is None else title + ', ' + label} (no finite {source.metric})")
        elif len(curves) < MAX_CURVES:
            curves.append(Curve(title if label == "all runs" else label, *band))
        else:
            left_out.append(label if by is None else f"{title}, {label}")
    if not any(panels.values()):
        return None
    what = {PER_EPOCH: "Validation accuracy per epoch",
            AT_CHECKPOINTS: "Validation accuracy at each checkpoint, against training steps (the runs have "
                            f"fewer than {FEW_EPOCHS} epochs)",
            LOGGED_LOSS: "Training loss of the logged batches, against training steps (the runs have fewer than "
                         f"{FEW_EPOCHS} epochs and no validation checkpoints)"}[source]
    caption = f"{what}: the line is the mean over seeds, the band spans the lowest and the highest seed."
    if left_out:
        caption += " Not drawn: " + "; ".join(left_out) + "."
    png = curves_png([CurvePanel(title, curves) for title, curves in panels.items()], source,
                     "band: min–max over seeds")
    return Drawn(what.split(" (")[0].lower(), png, caption)


def activation_percentiles(group: Group) -> Drawn | None:
    """Per placement: its first cell's lowest-seed run (a done one if any), layer 1 and the last layer."""
    picked: dict[str, tuple[tuple[str, ...], FinishedRun]] = {}
    for key, runs in group.cells.items():
        placement = str(runs[0].fields.get("model.bn"))
        # A run that trained if any, else one that at least recorded probes (not a failed one).
        finished = ([run for run in runs if run.status in ("done", DID_NOT_TRAIN)]
                    or [run for run in runs if run.status != "failed"])
        if placement not in picked and finished:
            picked[placement] = (key, min(finished, key=lambda run: run.fields["seed"]))
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
               "hidden layer, bottom row: the last. Runs: " + "; ".join(used) + ".")
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
        axis.set_title(panel.title, fontsize=10)
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


def curves_png(panels: Sequence[CurvePanel], source: CurveSource, band: str) -> bytes:
    """One line per cell (mean over seeds) with a shaded band, one panel per group; a log x axis
    for steps, where one panel may hold runs of a hundred steps and of thousands."""
    from matplotlib.ticker import MaxNLocator

    columns = min(len(panels), 3)
    rows = math.ceil(len(panels) / columns)
    figure, axes = new_figure(columns, rows)
    labels = list(dict.fromkeys(curve.label for panel in panels for curve in panel.curves))
    colours = {label: f"C{index % 10}" for index, label in enumerate(labels)}  # the same cell, the same colour
    handles = {}
    scale = 100 if source.percent else 1
    for axis, panel in zip(axes, panels, strict=False):
        for curve in panel.curves:
            colour = colours[curve.label]
            (handles[curve.label],) = axis.plot(curve.x, [scale * v for v in curve.mean], "o-" if len(curve.x) < 30
                                                else "-", ms=3, lw=1.5, color=colour, label=curve.label)
            axis.fill_between(curve.x, [scale * v for v in curve.low], [scale * v for v in curve.high],
                              color=colour, alpha=0.15, linewidth=0)
            if len(curve.x) == 1:  # a band of one point is invisible: show the seeds' range as a bar
                mean = scale * curve.mean[0]
                axis.errorbar(curve.x, [mean], yerr=[[mean - scale * curve.low[0]], [scale * curve.high[0] - mean]],
                              color=colour, capsize=4)
        axis.set(xlabel=source.xlabel, ylabel=source.ylabel if axis in axes[::columns] else "", title=panel.title)
        axis.title.set_fontsize(10)
        xs = sorted({x for curve in panel.curves for x in curve.x})
        if source.x == "step":
            axis.set_xscale("log" if len(xs) > 1 and xs[-1] / xs[0] > 20 else "linear")
            if not source.percent:
                axis.set_yscale("log")
        elif len(xs) > 12:
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        else:  # few epochs: one tick each (a locator puts fractional ticks around a single one)
            axis.set_xticks(xs, [f"{x:g}" for x in xs])
            if len(xs) == 1:
                axis.set_xlim(xs[0] - 0.5, xs[0] + 0.5)
        axis.grid(alpha=0.3)
    for axis in axes[len(panels):]:
        axis.set_axis_off()
    if handles:
        figure.legend([handles[label] for label in labels], labels, loc="outside lower center",
                      ncol=min(len(labels), 4), fontsize=8, title=band, title_fontsize=8, frameon=False)
    return png_bytes(figure)


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

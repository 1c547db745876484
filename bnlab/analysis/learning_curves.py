"""The report's learning curves: per cell, validation accuracy per epoch, or against steps when
runs are short (a one-epoch run's per-epoch curve is a single point). Reads run tables through
records' FinishedRun and draws with figures' bare-Figure helpers; writes nothing."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from bnlab.analysis.cells import Group
from bnlab.analysis.figures import Drawn, new_figure, png_bytes
from bnlab.records import FinishedRun

MAX_CURVES = 8  # lines per learning-curve panel; more cells are named in the caption, not drawn


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
LOGGED_LOSS = CurveSource("steps", "step", "train_loss", "step", "training loss (logged batches)", False)
LOSS_WINDOW = 5  # logged batches a loss point averages: one batch of 4 to 64 images is mostly noise
FEW_EPOCHS = 3  # below this many epochs a per-epoch curve is a point or two: draw it against steps


def curve_band(runs: list[FinishedRun], source: CurveSource) -> Band | None:
    per_x: dict[float, list[float]] = {}
    for run in runs:
        table = run.frame(source.table)
        if source.metric not in table or source.x not in table:
            continue
        values = table[source.metric]
        if source is LOGGED_LOSS:  # a diverged point stays missing: rolling() would average over it
            values = values.rolling(LOSS_WINDOW, min_periods=1).mean().where(values.abs() < math.inf)
        for at, value in zip(table[source.x], values, strict=True):
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
    if any(curve_band([run], AT_CHECKPOINTS) is not None for run in runs):
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
        band = curve_band(runs, source)
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
            LOGGED_LOSS: f"Training loss of the logged batches (a running mean over {LOSS_WINDOW}), against training "
                         f"steps (the runs have fewer than {FEW_EPOCHS} epochs and no validation checkpoints)"}[source]
    caption = f"{what}: the line is the mean over seeds, the band spans the lowest and the highest seed."
    if left_out:
        caption += " Not drawn: " + "; ".join(left_out) + "."
    png = curves_png([CurvePanel(title, curves) for title, curves in panels.items()], source,
                     "band: min–max over seeds")
    return Drawn(what.split(" (")[0].lower(), png, caption)


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
        wide = max(len(label) for label in labels) > 30  # four long labels a row overrun the figure
        figure.legend([handles[label] for label in labels], labels, loc="outside lower center",
                      ncol=min(len(labels), 2 if wide else 4), fontsize=8, title=band, title_fontsize=8, frameon=False)
    return png_bytes(figure)

"""The one picture that shows a claim's verdict, first in its report section: what a suite's
`figure` asks for (docs/claims.md, "The verdict's figure"), drawn from the same arm runs the
verdict reads. Three kinds: a metric against a grid axis per arm with 95% CI bands, curves from
steps.csv or layers.csv per arm, and bars per arm."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from bnlab.analysis.arms import LAYER_METRICS, ArmRun, metric_value
from bnlab.analysis.compare import best_nuisance, metric_words
from bnlab.analysis.figures import Drawn, new_figure, png_bytes
from bnlab.analysis.stats import summarize
from bnlab.analysis.suites import FigureSpec, Suite, cell_label


def verdict_figure(suite: Suite, axes: dict[str, dict[str, list[Any]]], members: list[ArmRun]) -> Drawn | None:
    spec = suite.figure
    if spec is None:
        return None
    in_panel = [m for m in members if m.panel == spec.panel]
    arms = spec.arms or suite.panel_arms(spec.panel)
    nuisance = suite.panel(spec.panel).nuisance
    panels = axes[spec.panel].get(spec.by, [None]) if spec.by else [None]
    draw = {"against": _against, "curves": _curves, "bars": _bars}[spec.kind]
    return draw(suite, spec, axes[spec.panel], in_panel, arms, nuisance, panels)


def _at(members: list[ArmRun], arm: str, where: dict[str, Any], nuisance: str | None,
        candidates: Sequence[Any]) -> tuple[list[ArmRun], Any]:
    """The arm's runs at `where`, its nuisance chosen on validation accuracy where it is `best`."""
    fixed = {dotted: value for dotted, value in where.items() if value != "best"}
    runs = [m for m in members if m.arm == arm and m.at(fixed)]
    if nuisance and where.get(nuisance) == "best":
        pick = best_nuisance(runs, nuisance, candidates)
        return [m for m in runs if m.cell.get(nuisance) == pick], pick
    return runs, None


def _mean_ci(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and its 95% t-interval over the finite values (the mean alone with one of them)."""
    summary = summarize(values)
    if summary["n"] == 1:
        return summary["mean"], summary["mean"], summary["mean"]
    return summary["mean"], summary["ci95_low"], summary["ci95_high"]


def _has_finite_line(axis: Any) -> bool:
    """Whether anything finite is drawn: matplotlib cannot log-scale an axis of NaN lines alone
    (a smoke run where nothing trained)."""
    return any(math.isfinite(float(y)) for line in axis.get_lines() for y in line.get_ydata())


def _short(value: Any) -> str:
    """A panel title's value: a list of one repeated width as [100]x8, so titles do not overlap."""
    if isinstance(value, list) and len(value) > 2 and len(set(value)) == 1:
        return f"[{value[0]}]×{len(value)}"
    return str(value)


def _scaled(spec: FigureSpec, value: float) -> float:
    return value * spec.scale


def _ylabel(spec: FigureSpec) -> str:
    return spec.ylabel or metric_words(spec.y) + (" (%)" if spec.scale == 100 else "")


def _against(suite: Suite, spec: FigureSpec, axes: dict[str, list[Any]], members: list[ArmRun], arms: list[str],
             nuisance: str | None, panels: list[Any]) -> Drawn:
    xs = axes[spec.x]
    rows = 2 if spec.failures else 1
    figure, grid = new_figure(len(panels), rows, height=3.0)
    picks = []
    for column, by_value in enumerate(panels):
        top, bottom = grid[column], grid[len(panels) + column] if spec.failures else None
        for index, arm in enumerate(arms):
            means, lows, highs, failed = [], [], [], []
            for x in xs:
                where = {**spec.where, spec.x: x, **({spec.by: by_value} if spec.by else {})}
                runs, pick = _at(members, arm, where, nuisance, axes.get(nuisance, []) if nuisance else [])
                if pick is not None:
                    picks.append(f"{arm} at {spec.x}={x}: {nuisance}={pick}")
                mean, low, high = _mean_ci([metric_value(m.run, spec.y) for m in runs])
                means.append(_scaled(spec, mean))
                # An accuracy's interval from two or three seeds can pass 0 or 100: drawn inside them.
                lows.append(max(_scaled(spec, low), 0.0) if spec.scale == 100 else _scaled(spec, low))
                highs.append(min(_scaled(spec, high), 100.0) if spec.scale == 100 else _scaled(spec, high))
                failed.append(sum(not m.run.trained for m in runs) / len(runs) if runs else math.nan)
            colour = f"C{index % 10}"
            top.plot(xs, means, "o-", color=colour, ms=3, lw=1.5, label=arm)
            top.fill_between(xs, lows, highs, color=colour, alpha=0.18, linewidth=0)
            if bottom is not None:
                bottom.plot(xs, [100 * f for f in failed], "s--", color=colour, ms=3, lw=1.2, label=arm)
        title = f"{spec.by}={_short(by_value)}" if spec.by else ""
        for axis, label in ((top, _ylabel(spec)), (bottom, "runs that failed to train (%)")):
            if axis is None:
                continue
            if spec.log_x and _has_finite_line(axis):
                axis.set_xscale("log")
                if len(xs) <= 10:  # the grid's own values read better than powers of ten
                    axis.set_xticks(xs, [f"{x:g}" for x in xs])
                    axis.minorticks_off()
            axis.set(xlabel=spec.x, ylabel=label if column == 0 else "", title=title if axis is top else "")
            axis.title.set_fontsize(10)
            axis.grid(alpha=0.3)
    grid[0].legend(fontsize=8)
    caption = (f"Mean over seeds with a 95% t-interval band, per arm, against {spec.x}"
               + (f" at {cell_label(spec.where)}" if spec.where else "")
               + (f"; where {nuisance} is 'best', each arm at each point is at its best value on validation "
                  f"accuracy ({'; '.join(dict.fromkeys(picks))})" if picks else "")
               + (". The lower row: the share of runs that failed to train." if spec.failures else "."))
    return Drawn(spec.title, png_bytes(figure), caption)


def _curves(suite: Suite, spec: FigureSpec, axes: dict[str, list[Any]], members: list[ArmRun], arms: list[str],
            nuisance: str | None, panels: list[Any]) -> Drawn:
    ys = [spec.y, *spec.also]
    figure, grid = new_figure(len(ys), 1, width=4.6, height=3.4)
    for axis, y in zip(grid, ys, strict=True):
        scale = spec.scale if y == spec.y else 1.0  # the further columns (ics_l2, drift) are not fractions
        for index, arm in enumerate(arms):
            runs, _ = _at(members, arm, spec.where, nuisance, axes.get(nuisance, []) if nuisance else [])
            series = [_series(m, spec.x, y) for m in runs if m.run.trained]
            series = [s for s in series if s]
            if not series:
                continue
            x, per_seed = _by_step(series) if spec.x == "step" else binned(series, spec.log_x)
            mean = [scale * sum(values) / len(values) for values in per_seed]
            low = [scale * min(values) for values in per_seed]
            high = [scale * max(values) for values in per_seed]
            colour = f"C{index % 10}"
            axis.plot(x, mean, "-", color=colour, lw=1.5, label=f"{arm} ({len(series)} seeds)")
            axis.fill_between(x, low, high, color=colour, alpha=0.15, linewidth=0)
        matched = suite.rule.metric.split(":")
        if spec.x == "train_eval_loss" and matched[0] == "matched" and len(matched) == 3:
            axis.axvline(float(matched[2]), color="#6b7280", ls=":", lw=1.2,
                         label=f"train loss {matched[2]}: where the verdict is read")
        if spec.log_x and _has_finite_line(axis):
            axis.set_xscale("log")
        if spec.invert_x:
            axis.invert_xaxis()
        axis.set(xlabel=spec.x, ylabel=y if y in LAYER_METRICS else (spec.ylabel or y))
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    caption = (f"Per arm{' at ' + cell_label(spec.where) if spec.where else ''}: the mean over seeds of "
               f"{', '.join(ys)} against {spec.x}, with the seeds' range shaded"
               + (" (layers.csv columns averaged over layers)" if any(y in LAYER_METRICS for y in ys) else "")
               + ("" if spec.x == "step" else
                  f". Checkpoints are binned by {spec.x} ({BINS} {'log-' if spec.log_x else ''}spaced bins); each "
                  "seed's checkpoints in a bin are averaged first, and a bin is drawn where at least half the "
                  "seeds have one") + ".")
    return Drawn(spec.title, png_bytes(figure), caption)


BINS = 16  # bins over a non-step x (a loss): seeds reach a given loss at different checkpoints


def _by_step(series: list[list[tuple[float, float]]]) -> tuple[list[float], list[list[float]]]:
    """Checkpoint i of every seed (the same step in each), up to the shortest run."""
    length = min(len(points) for points in series)
    return [series[0][i][0] for i in range(length)], [[points[i][1] for points in series] for i in range(length)]


def binned(series: list[list[tuple[float, float]]], log: bool) -> tuple[list[float], list[list[float]]]:
    """Per bin of x: each seed's mean y over its checkpoints there. Averaging checkpoint i across
    seeds would pair different x values (one seed's loss at step 400 is another's at 300). Bins are
    half-open (the last one closed), so each checkpoint counts once; non-finite x are left out."""
    import numpy as np

    kept = [[(x, y) for x, y in points if math.isfinite(x) and (x > 0 or not log)] for points in series]
    xs = np.array([x for points in kept for x, _ in points])
    if xs.size == 0:
        return [], []
    if xs.min() == xs.max():
        return [float(xs.min())], [[float(np.mean([y for _, y in points])) for points in kept if points]]
    edges = (np.geomspace if log else np.linspace)(xs.min(), xs.max(), BINS + 1)
    centres, per_seed = [], []
    for index, (left, right) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        last = index == BINS - 1
        means = [float(np.mean(inside)) for points in kept
                 if (inside := [y for x, y in points if left <= x < right or (last and x == right)])]
        if 2 * len(means) >= len(series):
            centres.append(float(np.sqrt(left * right) if log else (left + right) / 2))
            per_seed.append(means)
    return centres, per_seed


def _series(member: ArmRun, x: str, y: str) -> list[tuple[float, float]]:
    """(x, y) per checkpoint: steps.csv columns, or a layers.csv column averaged over layers per step."""
    if y in LAYER_METRICS:
        by_step: dict[float, list[float]] = {}
        for row in member.run.table("layers"):
            if row.get(y):
                value = float(row[y])
                if math.isfinite(value):
                    by_step.setdefault(float(row["step"]), []).append(value)
        return [(step, sum(values) / len(values)) for step, values in sorted(by_step.items())]
    return [(float(row[x]), float(row[y])) for row in member.run.table("steps") if row.get(x) and row.get(y)]


def _bars(suite: Suite, spec: FigureSpec, axes: dict[str, list[Any]], members: list[ArmRun], arms: list[str],
          nuisance: str | None, panels: list[Any]) -> Drawn:
    figure, grid = new_figure(1, 1, width=max(4.0, 0.9 * len(arms) + 1.5), height=3.4)
    axis = grid[0]
    for index, arm in enumerate(arms):
        runs, _ = _at(members, arm, spec.where, nuisance, axes.get(nuisance, []) if nuisance else [])
        metric = suite.arms[arm].get("metric", spec.y)
        values = [_scaled(spec, metric_value(m.run, metric)) for m in runs]
        mean, low, high = _mean_ci(values)
        axis.bar(index, mean, color=f"C{index % 10}", alpha=0.8)
        if math.isfinite(mean):
            axis.errorbar(index, mean, yerr=[[mean - low], [high - mean]], color="#111827", capsize=4)
            axis.plot([index] * len(values), values, "o", color="#111827", ms=2.5, alpha=0.6)
    axis.set_xticks(range(len(arms)), arms, rotation=30, ha="right", fontsize=8)
    axis.set_ylabel(_ylabel(spec))
    axis.grid(alpha=0.3, axis="y")
    finite = [v for m in members for v in [_scaled(spec, metric_value(m.run, suite.arms[m.arm].get("metric", spec.y)))]
              if m.arm in arms and math.isfinite(v)]
    if finite and spec.zoom:
        pad = 0.1 * (max(finite) - min(finite)) + 1e-9
        axis.set_ylim(min(finite) - pad, max(finite) + pad)
    caption = (f"Per arm{' at ' + cell_label(spec.where) if spec.where else ''}: the mean over seeds with a 95% "
               "t-interval, each seed a dot.")
    return Drawn(spec.title, png_bytes(figure), caption)

"""The seed-to-seed spread of a suite's metric along one axis (`spread:` in a suite): "unstable"
is a claim about spread as much as about the mean. Per value of the axis and per compared pair,
each arm at its best nuisance value (chosen on validation, as the comparisons choose it), the sd
over seeds of the runs that trained, how many did not, and a Brown-Forsythe test of equal spread
(scipy's Levene test centred on the median, robust to a skewed sample). Every number comes from
runs.csv's values."""

from __future__ import annotations

import math
from typing import Any

from bnlab.analysis.arms import ArmRun, metric_value
from bnlab.analysis.compare import best_nuisance
from bnlab.analysis.stats import summarize
from bnlab.analysis.suites import MAIN, Suite


def spread_rows(suite: Suite, axes: dict[str, dict[str, list[Any]]], members: list[ArmRun]) -> list[dict[str, Any]]:
    """One row per (axis value, compared pair) of the main panel; [] when the suite asks for none."""
    if suite.spread is None:
        return []
    from scipy import stats

    grid, nuisance, metric = axes[MAIN], suite.nuisance, suite.rule.metric
    rows = []
    for value in grid[suite.spread]:
        for pair in suite.compare:
            row: dict[str, Any] = {"axis": suite.spread, "value": value, "a": pair[0], "b": pair[1],
                                   "metric": metric, "nuisance": nuisance,
                                   "candidates": grid[nuisance] if nuisance else []}
            samples = []
            for side, arm in (("a", pair[0]), ("b", pair[1])):
                mine = [m for m in members if m.panel == MAIN and m.arm == arm and m.cell.get(suite.spread) == value]
                pick = best_nuisance(mine, nuisance, grid[nuisance]) if nuisance else None
                chosen = [m for m in mine if nuisance is None or m.cell.get(nuisance) == pick]
                values = [v for v in (metric_value(m.run, metric) for m in chosen) if math.isfinite(v)]
                row |= {f"{side}_pick": pick, f"{side}_runs": sorted(m.run.run_id for m in chosen),
                        f"{side}_n": len(values), f"{side}_failed": len(chosen) - len(values),
                        f"{side}_sd": _sd(values)}
                samples.append(values)
            # Two values sit equally far from their median, so the test needs three a side.
            testable = all(len(values) >= 3 for values in samples) and any((_sd(values) or 0) > 0 for values in samples)
            p = float(stats.levene(*samples, center="median").pvalue) if testable else math.nan
            row["brown_forsythe_p"] = p if math.isfinite(p) else None
            rows.append(row)
    return rows


def spread_table(suite: Suite, rows: list[dict[str, Any]]) -> tuple[str, Any]:
    """The report's table of `rows`, in the rule's unit."""
    import pandas as pd

    unit, scale = suite.rule.unit, suite.rule.scale
    nuisance = suite.nuisance or "setting"
    frame = pd.DataFrame([{
        row["axis"]: row["value"], "A": row["a"], "B": row["b"],
        f"A's {nuisance}": row["a_pick"], f"B's {nuisance}": row["b_pick"], "n (A, B)": f"{row['a_n']}, {row['b_n']}",
        "did not train (A, B)": f"{row['a_failed']}, {row['b_failed']}",
        f"sd A ({unit})": _shown(row["a_sd"], scale), f"sd B ({unit})": _shown(row["b_sd"], scale),
        "sd B / sd A": _shown(row["b_sd"] / row["a_sd"] if row["a_sd"] and row["b_sd"] is not None else None, 1),
        "Brown-Forsythe p": "–" if row["brown_forsythe_p"] is None else f"{row['brown_forsythe_p']:.3f}",
    } for row in rows])
    title = (f"Seed-to-seed spread of {suite.rule.metric} per {rows[0]['axis']}, each arm at its best {nuisance} "
             "(sd over the seeds that trained; Brown-Forsythe test of equal spread, which a few seeds can rarely "
             "reject; each p on its own, not corrected for the table's many tests)")
    return title, frame


def _sd(values: list[float]) -> float | None:
    sd = summarize(values)["sd"]
    return sd if math.isfinite(sd) else None  # None below two values: verdict.json stays plain JSON


def _shown(value: float | None, scale: float) -> str:
    return "–" if value is None else f"{scale * value:.2f}"

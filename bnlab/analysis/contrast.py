"""Contrasts: a weighted sum over (panel, arm, cell) terms per seed, judged like a paired
difference. BN's loss from batch 64 to batch 4 minus the control's is one (an interaction)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from bnlab.analysis.arms import ArmRun, metric_value
from bnlab.analysis.compare import BEST_CRITERION, Comparison, best_nuisance, metric_words, per_seed
from bnlab.analysis.stats import Verdict, paired_comparison, plain_words, verdict
from bnlab.analysis.suites import Contrast, Suite, cell_label


def contrast_comparisons(suite: Suite, axes: dict[str, dict[str, list[Any]]],
                         members: list[ArmRun]) -> list[Comparison]:
    """Every contrast of the suite; `axes` gives each panel's grid at this budget (a term's
    nuisance at `best` is chosen among its values on validation accuracy, never on test)."""
    return [_contrast(suite, contrast, axes, members) for contrast in suite.contrasts]


def _contrast(suite: Suite, contrast: Contrast, axes: dict[str, dict[str, list[Any]]],
              members: list[ArmRun]) -> Comparison:
    rule = suite.rule
    metric = contrast.metric or rule.metric
    margin = contrast.margin or rule.margin
    direction = contrast.direction or rule.direction
    terms, chosen = [], []
    for term in contrast.terms:
        in_panel = [m for m in members if m.panel == term.panel]
        cell = dict(term.where)
        record: dict[str, Any] = {"panel": term.panel, "arm": term.arm, "where": dict(term.where),
                                  "weight": term.weight}
        nuisance = suite.panel(term.panel).nuisance
        if nuisance and cell.get(nuisance) == "best":
            fixed = {dotted: value for dotted, value in cell.items() if dotted != nuisance}
            candidates = axes[term.panel][nuisance]
            cell[nuisance] = best_nuisance([m for m in in_panel if m.arm == term.arm and m.at(fixed)], nuisance,
                                           candidates)
            record["selection"] = {"selection": "best", "axis": nuisance, "criterion": BEST_CRITERION,
                                   "candidates": list(candidates), "picked": cell[nuisance]}
        record["cell"] = cell
        terms.append(record)
        chosen.append(per_seed(in_panel, term.arm, cell))
    seeds = sorted(set.intersection(*(set(by_seed) for by_seed in chosen)))
    rows = []
    for seed in seeds:
        values = [metric_value(by_seed[seed].run, metric) for by_seed in chosen]
        value = sum(t.weight * v for t, v in zip(contrast.terms, values, strict=True))
        rows.append({"seed": seed, "values": values, "runs": [[by_seed[seed].run.folder.name] for by_seed in chosen],
                     "value": value if math.isfinite(value) else math.nan})
    for record, by_seed in zip(terms, chosen, strict=True):
        counted = [by_seed[seed].run for seed in seeds]
        record["failures"] = {"failed": sum(not run.trained for run in counted), "total": len(counted)}
    paired = paired_comparison([0.0] * len(rows), [row["value"] for row in rows], margin)
    # Against a constant zero the means of the "arms" and Welch's test say nothing.
    paired = replace(paired, mean_a=math.nan, mean_b=math.nan, welch_p=math.nan)
    outcome: Verdict = verdict(paired, margin, direction)
    formula = " ".join(f"{t['weight']:+g} × {t['arm']} at {cell_label(t['cell'])}"
                       + ("" if t["panel"] == "main" else f" (panel {t['panel']})") for t in terms)
    sentence = plain_words(paired, outcome, name_a="zero", name_b=f"the contrast {contrast.name}",
                           metric=metric_words(metric), unit=rule.unit, scale=rule.scale, margin=margin,
                           direction=direction)
    sentence = f"{sentence} The contrast is {formula}, per seed."
    failed = [f"{t['arm']} at {cell_label(t['cell'])} {t['failures']['failed']}/{t['failures']['total']}"
              for t in terms if t["failures"]["failed"]]
    n_dropped = len(rows) - paired.n
    if failed:
        sentence += (f" Runs that failed to train: {'; '.join(failed)}; {n_dropped} seed(s) with such a run are "
                     "left out of the contrast, which can favour the arm that failed.")
    return Comparison(contrast.name, "", contrast.name, paired, outcome, sentence, primary=not contrast.secondary,
                      n_dropped=n_dropped, kind="contrast", metrics=(metric, metric), per_seed=rows,
                      terms=tuple(terms), margin=margin, direction=direction)

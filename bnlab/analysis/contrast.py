"""Contrasts: a weighted sum over (panel, arm, cell) terms per seed, judged like a paired
difference. BN's loss from batch 64 to batch 4 minus the control's is one (an interaction)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from bnlab.analysis.arms import ArmRun, metric_value
from bnlab.analysis.compare import BEST_CRITERION, Comparison, best_nuisance, metric_words, per_seed
from bnlab.analysis.stats import Verdict, paired_comparison, plain_words, verdict
from bnlab.analysis.suites import Contrast, Selection, Suite, Term, cell_label
from bnlab.errors import ConfigError


def contrast_comparisons(suite: Suite, axes: dict[str, dict[str, list[Any]]],
                         members: list[ArmRun]) -> list[Comparison]:
    """Every contrast of the suite; `axes` gives each panel's grid at this budget (a term's
    nuisance at `best` is chosen among its values on validation accuracy, never on test)."""
    found = {contrast.name: _contrast(suite, contrast, axes, members) for contrast in suite.contrasts
             if _at_this_budget(contrast, axes)}
    for contrast in suite.contrasts:
        if contrast.needs is not None:
            found[contrast.name] = apply_needs(found[contrast.name], found[contrast.needs])
    return list(found.values())


def _at_this_budget(contrast: Contrast, axes: dict[str, dict[str, list[Any]]]) -> bool:
    """Whether every term's cell is in its panel's grid at this budget. A secondary contrast whose
    cells a budget does not run (a pilot cut to the primary cells) is left out; a primary one is
    an error naming the cell."""
    for term in contrast.terms:
        for dotted, value in term.where.items():
            if value != "best" and value not in axes[term.panel].get(dotted, [value]):
                if contrast.secondary:
                    return False
                raise ConfigError(f"contrast {contrast.name}: {dotted}={value!r} is not run at this budget "
                                  f"(panel {term.panel} runs {axes[term.panel][dotted]}); a primary contrast needs "
                                  "its cells")
    return True


def apply_needs(comparison: Comparison, needed: Comparison) -> Comparison:
    """A "not supported" that stands only if `needed`'s 95% CI stays above minus its margin on its
    claimed side (at least as much, within the margin); else inconclusive, saying why."""
    if comparison.verdict.outcome != "not supported":
        return comparison
    low = min(needed.direction * bound for bound in needed.paired.ci95) if needed.paired.n >= 2 else -math.inf
    if low > -needed.margin:
        return replace(comparison, sentence=comparison.sentence + f" It needs {needed.name_b} to hold at least "
                       f"within its margin, and it does (the CI's low end is {low:.3g} on its claimed side).")
    return replace(comparison, verdict=Verdict("inconclusive", f"needs {needed.name_b}", None),
                   sentence=comparison.sentence + f" That would refute the claim only if {needed.name_b} held at "
                   "least within its margin, which it does not here, so this is inconclusive.")


def _select(term: Term, nuisance: str, axes: dict[str, dict[str, list[Any]]], members: list[ArmRun]) -> dict:
    """The term's `best` nuisance value: by its `select` (another panel's runs, a metric, highest or
    lowest mean over the runs that trained), else the highest mean val_acc on its own panel."""
    select = term.select or Selection()
    panel = select.panel or term.panel
    candidates = axes[panel][nuisance]
    fixed = {dotted: value for dotted, value in term.where.items() if dotted != nuisance}
    runs = [m for m in members if m.panel == panel and m.arm == term.arm and m.at(fixed)]
    picked = best_nuisance(runs, nuisance, candidates, select.metric, select.lower)
    if term.select is None:
        return {"selection": "best", "axis": nuisance, "criterion": BEST_CRITERION, "candidates": list(candidates),
                "picked": picked}
    return {"selection": "best", "axis": nuisance, "panel": panel, "metric": select.metric, "lower": select.lower,
            "criterion": f"the {'lowest' if select.lower else 'highest'} mean {select.metric} over the arm's runs "
                         f"that trained in panel {panel}", "candidates": list(candidates), "picked": picked}


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
                                  "weight": term.weight, "metric": term.metric or metric}
        nuisance = suite.panel(term.panel).nuisance
        if nuisance and cell.get(nuisance) == "best":
            record["selection"] = _select(term, nuisance, axes, members)
            cell[nuisance] = record["selection"]["picked"]
        record["cell"] = cell
        terms.append(record)
        chosen.append(per_seed(in_panel, term.arm, cell))
    seeds = sorted(set.intersection(*(set(by_seed) for by_seed in chosen)))
    rows = []
    for seed in seeds:
        values = [metric_value(by_seed[seed].run, term.metric or metric)
                  for term, by_seed in zip(contrast.terms, chosen, strict=True)]
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
    formula = " ".join(f"{t['weight']:+g} × {t['arm']}"
                       + ("" if t["metric"] == metric else f"'s {t['metric']}") + f" at {cell_label(t['cell'])}"
                       + ("" if t["panel"] == "main" else f" (panel {t['panel']})") for t in terms)
    unit = rule.unit if contrast.unit is None else contrast.unit
    scale = rule.scale if contrast.scale is None else contrast.scale
    sentence = plain_words(paired, outcome, name_a="zero", name_b=f"the contrast {contrast.name}",
                           metric=metric_words(metric), unit=unit, scale=scale, margin=margin, direction=direction)
    if sentence.startswith("the contrast"):  # plain_words opens with name_b: the sentence's first word
        sentence = "T" + sentence[1:]
    sentence = f"{sentence} The contrast is {formula}, per seed."
    failed = [f"{t['arm']} at {cell_label(t['cell'])} {t['failures']['failed']}/{t['failures']['total']}"
              for t in terms if t["failures"]["failed"]]
    n_dropped = len(rows) - paired.n
    if failed:
        sentence += (f" Runs that failed to train: {'; '.join(failed)}; {n_dropped} seed(s) with such a run are "
                     "left out of the contrast, which can favour the arm that failed.")
    return Comparison(contrast.name, "", contrast.name, paired, outcome, sentence, primary=not contrast.secondary,
                      n_dropped=n_dropped, kind="contrast", metrics=(metric, metric), per_seed=rows,
                      terms=tuple(terms), margin=margin, direction=direction, needs=contrast.needs,
                      unit=unit, scale=scale)

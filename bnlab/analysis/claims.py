"""A claim's verdict: its suite's rule applied to the runs, the primary comparisons combined into
one outcome, said in plain words beside what the literature expects (docs/claims.md), and
what a reader needs to recheck it (runs.csv rows, verdict.json records)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bnlab.analysis.arms import first_reach, metric_value, read_arm_runs
from bnlab.analysis.compare import Comparison
from bnlab.analysis.contrast import contrast_comparisons
from bnlab.analysis.rules import FORGIVING_TOLERANCE, RULES, STABLE_TOLERANCE
from bnlab.analysis.spread import spread_rows, spread_table
from bnlab.analysis.suites import MAIN, Rule, Suite
from bnlab.analysis.verdict_figure import verdict_figure
from bnlab.config import cell_values
from bnlab.config.spec import Sweep
from bnlab.errors import ConfigError

OUTCOMES = ("supported", "not supported", "depends", "inconclusive")


@dataclass(frozen=True)
class ClaimResult:
    name: str  # suite name, e.g. "placement"
    claim: str  # the claim as practitioners hear it
    design: str  # e.g. "docs/literature.md C1"
    budget: str  # smoke | quick | full
    outcome: str  # one of OUTCOMES
    summary: str  # one or two plain sentences with the effect size and CI
    rule: dict[str, Any]  # name, metric, margin, direction
    comparisons: list[Comparison] = field(default_factory=list)
    tables: list[tuple[str, Any]] = field(default_factory=list)  # (title, pandas DataFrame): rates, windows
    deviations: list[str] = field(default_factory=list)  # where the suite departs from its design
    literature: str = ""  # what the literature expects, and whether this verdict disagrees
    expected: str | None = None  # the suite's `expected`: what the literature leads us to expect
    disagrees: bool = False  # the outcome contradicts `expected` (claims.disagrees)
    command: str = ""  # the exact command that produced it
    seeds: list[int] = field(default_factory=list)
    runs: int = 0
    wall_seconds: float | None = None  # training its runs took, over every invocation (invocations.json)
    figure: Any = None  # the verdict's one picture (verdict_figure.Drawn), when the suite asks for one
    spread: list[dict[str, Any]] = field(default_factory=list)  # analysis/spread.py's rows, when asked for


def combine(comparisons: Sequence[Comparison]) -> str:
    """The claim's outcome from its primary comparisons (docs/claims.md): all supported ->
    supported; all not supported -> not supported; at least one of each -> depends; anything
    else -> inconclusive."""
    outcomes = {c.verdict.outcome for c in comparisons if c.primary}
    if outcomes == {"supported"}:
        return "supported"
    if outcomes == {"not supported"}:
        return "not supported"
    if {"supported", "not supported"} <= outcomes:
        return "depends"
    return "inconclusive"


def outcome_words(outcome: str, primary: Sequence[Comparison]) -> str:
    """What the outcome rests on, before the primary comparisons' own sentences."""
    if outcome == "depends":
        holds = "; ".join(c.label for c in primary if c.verdict.outcome == "supported")
        fails = "; ".join(c.label for c in primary if c.verdict.outcome == "not supported")
        return f"It depends: the claim holds at {holds}, not at {fails}."
    if outcome == "inconclusive" and len(primary) > 1:
        return "Inconclusive over the primary comparisons: " + "; ".join(
            f"{c.label}: {c.verdict.outcome}" for c in primary) + "."
    return ""


def disagrees(expected: str | None, outcome: str) -> bool:
    """Whether a verdict contradicts what the literature leads us to expect (a suite's `expected`).
    An inconclusive verdict settles nothing, so it contradicts nothing."""
    return expected is not None and outcome != "inconclusive" and expected not in (outcome, "mixed")


def _literature_note(suite: Suite, outcome: str) -> str:
    if not suite.literature:
        return ""
    if disagrees(suite.expected, outcome):
        return f"This verdict ({outcome}) DISAGREES with what the literature leads us to expect ({suite.expected}). " \
               f"{suite.literature}"
    return suite.literature


def runs_table(suite: Suite, sweep: Sweep, folder: Path, comparisons: Sequence[Comparison]) -> list[dict[str, Any]]:
    """runs.csv of a finding: one row per (panel, arm, run), i.e. every run an arm uses in a panel,
    once: its id, panel, arm, dataset, seed, every config field an arm, a grid or a panel's base
    sets (lists as JSON), status, val_acc, test_acc and every metric a comparison, contrast term
    or guard of that arm reads (steps with `censored`). A metric of a run that did not train is
    left empty: no comparison uses it."""
    metrics: dict[tuple[str, str], set[str]] = {}
    for c in comparisons:
        sides = [(t["panel"], t["arm"], t["metric"]) for t in c.terms]
        sides += [(t["selection"].get("panel", t["panel"]), t["arm"], t["selection"].get("metric", "val_acc"))
                  for t in c.terms if "selection" in t]
        sides = sides or [
            (c.panel, arm, metric) for arm, metric in zip((c.name_a, c.name_b), c.metrics, strict=True)]
        for panel, arm, metric in sides:
            metrics.setdefault((panel, arm), set()).update([metric, *([c.guard["metric"]] if c.guard else [])])
    target = suite.rule.target or 0.97
    rows, seen = [], set()
    for member in read_arm_runs(folder, sweep):
        run, key = member.run, (member.panel, member.arm)
        if key not in metrics or (*key, run.folder.name) in seen:
            continue
        seen.add((*key, run.folder.name))
        fields = {dotted: json.dumps(value) if isinstance(value, list) else value
                  for dotted, value in cell_values(run.config, list(sweep.axes)).items()}
        row = {"run_id": run.folder.name, "panel": member.panel, "arm": member.arm,
               "dataset": run.config.data.dataset, "seed": member.seed, **fields, "status": run.status,
               "val_acc": run.final.get("val_acc"), "test_acc": run.final.get("test_acc")}
        for metric in sorted(metrics[key] - {"val_acc", "test_acc", "forgiving"}):
            if metric == "steps":
                steps, reached = first_reach(run, target)
                row |= {"steps": steps, "censored": run.trained and not reached}
            else:
                row[metric] = metric_value(run, metric)
        rows.append(row)
    return rows


def comparison_record(c: Comparison, rule: Rule) -> dict[str, Any]:
    """One comparison as verdict.json keeps it (docs/claims.md, "Comparison kinds")."""
    record: dict[str, Any] = {}
    if c.kind == "contrast":  # its metric is written below, as a paired difference's is
        record |= {"name": c.name_b, "kind": c.kind, "label": c.label, "panel": c.panel, "terms": list(c.terms),
                   "needs": c.needs}
    else:
        record |= {"a": c.name_a, "b": c.name_b, "kind": c.kind, "label": c.label, "panel": c.panel}
    if c.kind == "fraction":  # the reference is the best cell of either arm, per seed
        record |= {"metric": "val_acc", "tolerance": FORGIVING_TOLERANCE, "reference": "both arms"}
    elif c.kind == "log_ratio":
        record |= {"metric": "steps", "target": rule.target or 0.97}
    elif c.kind == "largest_stable_lr":
        record |= {"metric": "val_acc", "tolerance": STABLE_TOLERANCE}
    elif c.metrics[0] == c.metrics[1]:
        record["metric"] = c.metrics[0]
    else:
        record |= {"metric_a": c.metrics[0], "metric_b": c.metrics[1]}
    p, rates = c.paired, c.rates
    record |= {"stratum": c.stratum, "selection": c.selection, "primary": c.primary,
               "margin": rule.margin if c.margin is None else c.margin,
               "direction": rule.direction if c.direction is None else c.direction, "per_seed": c.per_seed, "n": p.n,
               "n_dropped": c.n_dropped, "mean": p.diff_mean, "ci": list(p.ci95), "ci90": list(p.ci90),
               "outcome": c.verdict.outcome, "reason": c.verdict.reason, "seeds_to_settle": c.verdict.seeds_needed,
               "flags": list(c.flags)}
    if rates is not None:
        record["failures"] = {"a": rates.failures_a, "total_a": rates.total_a, "b": rates.failures_b,
                              "total_b": rates.total_b, "ci_a": list(rates.ci_a), "ci_b": list(rates.ci_b),
                              "fisher_p": rates.p_value, "smallest_reachable_p": rates.min_p,
                              "runs_a": sorted({r for row in c.per_seed for r in row["runs_a"]}),
                              "runs_b": sorted({r for row in c.per_seed for r in row["runs_b"]})}
    if c.guard is not None:
        record["guard"] = c.guard
    return record


def analyze(suite: Suite, sweep: Sweep, folder: Path, budget: str, command: str,
            wall_seconds: float | None = None) -> ClaimResult:
    members = read_arm_runs(folder, sweep)
    comparisons: list[Comparison] = []
    tables: list[tuple[str, Any]] = []
    axes = {name: {**sweep.axes, **suite.panel_grid(name, budget)} for name in suite.panel_names()}
    for name in suite.panel_names():
        view = suite.view(name)
        if not view.compare:
            continue
        found, extra = RULES[suite.rule.name](view, replace(sweep, axes=axes[name]),
                                              [m for m in members if m.panel == name])
        if name != MAIN:
            found = [replace(c, panel=name, label=f"panel {name}: {c.label}") for c in found]
            extra = [(f"Panel {name}: {title}", frame) for title, frame in extra]
        comparisons += found
        tables += extra
    comparisons += contrast_comparisons(suite, axes, members)
    spread = spread_rows(suite, axes, members)
    if spread:
        tables.append(spread_table(suite, spread))
    figure = verdict_figure(suite, axes, members)
    primary = [c for c in comparisons if c.primary]
    if not primary:
        raise ConfigError(f"claim {suite.name}: primary {suite.primary or '(each arm at its best)'} matches no "
                          f"comparison; comparisons: {'; '.join(sorted({c.label for c in comparisons}))}")
    outcome = combine(comparisons)
    summary = " ".join([outcome_words(outcome, primary), *(c.sentence for c in primary[:2])]).strip()
    if len(primary) > 2:
        summary += f" ({len(primary) - 2} more primary comparison(s) in the table.)"
    return ClaimResult(
        name=suite.name, claim=suite.claim, design=suite.design, budget=budget, outcome=outcome, summary=summary,
        rule=suite.rule.model_dump(), comparisons=comparisons, tables=tables, deviations=list(suite.deviations),
        literature=_literature_note(suite, outcome), expected=suite.expected,
        disagrees=disagrees(suite.expected, outcome), command=command, seeds=list(sweep.seeds),
        runs=len(sweep.configs), wall_seconds=wall_seconds, figure=figure, spread=spread,
    )

"""The decision rules a claim suite can name (docs/claims.md): each turns the suite's runs into
comparisons and extra tables. A new rule is a function here, registered in RULES."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from bnlab.analysis.arms import ArmRun, metric_value, steps_to
from bnlab.analysis.compare import Comparison, Value, compare_arms, mean_val, per_seed, strata
from bnlab.analysis.stats import PROJECTION_MAX_SEEDS, PROJECTION_POWER, rate_comparison
from bnlab.analysis.suites import Suite, cell_label
from bnlab.config.spec import Sweep
from bnlab.records import FinishedRun

FORGIVING_TOLERANCE = 0.01  # a cell is forgiving when its validation accuracy is this close to the best
STABLE_TOLERANCE = 0.01  # an lr is stable when its run trained and its val_acc is this close to the best


def _of_run(metric_of: Callable[[FinishedRun, str], float]) -> Value:
    return lambda member, metric: metric_of(member.run, metric)


def rule_paired_difference(suite: Suite, sweep: Sweep, members: list[ArmRun]) -> tuple[list[Comparison], list]:
    return compare_arms(suite, sweep, members, _of_run(metric_value)), []


def rule_steps_to_target(suite: Suite, sweep: Sweep, members: list[ArmRun]) -> tuple[list[Comparison], list]:
    """Paired log-ratio of steps to the target validation accuracy (B / A), said as a ratio."""
    target = suite.rule.target or 0.97

    def steps(member: ArmRun, _metric: str) -> float:
        return max(steps_to(member.run, target), 1.0)

    comparisons = compare_arms(suite, sweep, members, steps, kind="log_ratio")
    quantity = f"steps to {100 * target:.0f}% validation accuracy"
    return [_as_ratio(c, quantity, suite.rule.margin, suite.rule.direction) for c in comparisons], []


def _as_ratio(c: Comparison, quantity: str, margin: float, direction: int) -> Comparison:
    """The comparison's sentence in ratios B / A (the statistic is a mean log-ratio), with the
    CI's ends beside the margin as a ratio too; the notes plain_words added are kept."""
    p = c.paired
    if p.n == 0:
        return c

    def ratio(x: float) -> str:
        return f"{math.exp(x):.2f}x" if math.isfinite(x) else "–"

    ci = f" (95% CI {ratio(p.ci95[0])} to {ratio(p.ci95[1])})" if p.n > 1 else ""
    against = f"a margin of {ratio(direction * margin)}"
    nearest_one = ratio(min(p.ci95, key=abs))
    if c.verdict.seeds_needed is None:
        projection = (f"not even {PROJECTION_MAX_SEEDS} paired seeds would likely settle it (the effect sits near "
                      "the margin, or the spread is wide)")
    else:
        projection = (f"if the effect and spread seen so far held, {c.verdict.seeds_needed} paired seeds would "
                      f"reach a verdict with {PROJECTION_POWER:.0%} probability")
    reach = ratio(max(p.ci95, key=lambda x: direction * x))
    tail = {
        ("supported", "effect"): f"the CI's end nearest 1x is {nearest_one}, against {against}: the claim holds here",
        ("not supported", "opposite"): f"the opposite of the claim (the CI's end nearest 1x is {nearest_one}, "
                                       f"against {against})",
        ("not supported", "equivalent"): f"its 90% CI ({ratio(p.ci90[0])} to {ratio(p.ci90[1])}) is within a factor "
                                         f"of {math.exp(margin):.2f} either way, so no practical difference here",
    }.get((c.verdict.outcome, c.verdict.reason),
          f"the CI reaches {reach} on the claim's side, against {against}; inconclusive at this sample size; "
          f"projection: {projection}")
    sentence = (f"{c.name_b}'s {quantity} was {ratio(p.diff_mean)} that of {c.name_a}{ci} over {p.n} paired "
                f"seed(s); {tail}.")
    notes = c.sentence.split(" over ", 1)[1].split(". ", 1)
    return replace(c, sentence=sentence + (" " + notes[1] if len(notes) > 1 else ""))


def rule_stable_lr(suite: Suite, sweep: Sweep, members: list[ArmRun]) -> tuple[list[Comparison], list]:
    """Per stratum and seed, each arm's largest stable learning rate (its run trained and its
    validation accuracy is within STABLE_TOLERANCE of that seed's best over the arm's lrs),
    compared as a paired log-ratio B / A against the margin (ln 3: a 3x higher stable lr); beside
    it, failures per arm and lr (exact intervals, Fisher exact) and each arm's pooled window."""
    import pandas as pd

    lr_field = suite.nuisance or "train.lr"
    lrs = sweep.axes[lr_field]
    largest: dict[tuple[str, int, str], float] = {}
    runs_of: dict[tuple[str, int, str], list[str]] = {}
    by_seed, rows, windows = [], [], []
    for stratum in strata(suite, sweep):
        key = cell_label(stratum)
        for pair in suite.compare:
            a_name, b_name = pair[:2]
            stable = {}
            at_lr: dict[str, dict[Any, list[ArmRun]]] = {}
            for arm_name in (a_name, b_name):
                chosen = {lr: per_seed(members, arm_name, {**stratum, lr_field: lr}) for lr in lrs}
                at_lr[arm_name] = {lr: list(runs.values()) for lr, runs in chosen.items()}
                for seed in set.intersection(*(set(runs) for runs in chosen.values())):
                    if (arm_name, seed, key) not in largest:
                        seed_runs = {lr: chosen[lr][seed] for lr in lrs}
                        largest[arm_name, seed, key] = largest_stable(seed_runs)
                        runs_of[arm_name, seed, key] = [m.run.folder.name for m in seed_runs.values()]
                        by_seed.append(ArmRun(arm_name, dict(stratum), seed,
                                                  _any_run([m.run for m in seed_runs.values()])))
                best = max((mean_val(runs) for runs in at_lr[arm_name].values()), default=-math.inf)
                stable[arm_name] = [lr for lr, runs in at_lr[arm_name].items()
                                    if all(m.run.trained for m in runs) and mean_val(runs) >= best - STABLE_TOLERANCE]
            for lr in lrs:
                at_a, at_b = at_lr[a_name][lr], at_lr[b_name][lr]
                rates = rate_comparison(sum(not m.run.trained for m in at_a), len(at_a),
                                        sum(not m.run.trained for m in at_b), len(at_b))
                rows.append({**stratum, lr_field: lr,
                             f"{a_name} failed to train": _rate_cell(rates.failures_a, rates.total_a, rates.ci_a),
                             f"{b_name} failed to train": _rate_cell(rates.failures_b, rates.total_b, rates.ci_b),
                             "Fisher exact p": round(rates.p_value, 4),
                             "smallest reachable p": round(rates.min_p, 4)})
            windows.append({**stratum, **{f"{arm} stable lrs": ", ".join(map(str, stable[arm])) or "none"
                                          for arm in (a_name, b_name)},
                            **{f"{arm} largest stable lr": max(stable[arm], default=None) for arm in (a_name, b_name)}})
    once = suite.model_copy(update={"nuisance": None,
                                    "primary": {k: v for k, v in suite.primary.items() if k in suite.within}})
    comparisons = compare_arms(
        once, sweep, by_seed, lambda member, _metric: largest[member.arm, member.seed, cell_label(member.cell)],
        kind="largest_stable_lr", runs_of=lambda member: runs_of[member.arm, member.seed, cell_label(member.cell)],
        trained={m.run.folder.name: m.run.trained for m in members})
    comparisons = [replace(c, selection={"selection": "largest_stable", "axis": lr_field,
                                         "tolerance": STABLE_TOLERANCE}) for c in comparisons]
    tables = [("Runs that failed to train (diverged, failed, or final train loss above ln 10), per lr, with exact "
               "95% intervals; a Fisher p can never go below the smallest reachable p with these runs",
               pd.DataFrame(rows)),
              ("Stable learning-rate window per arm, pooled over seeds (no failures, mean accuracy within 1 pp of "
               "the arm's best)", pd.DataFrame(windows))]
    return [_as_ratio(c, "largest stable learning rate", suite.rule.margin, suite.rule.direction)
            for c in comparisons], tables


def largest_stable(runs: dict[Any, ArmRun]) -> float:
    """The largest lr (key) whose run trained and whose validation accuracy is within
    STABLE_TOLERANCE of the best of these runs; NaN when none trained."""
    values = {lr: metric_value(member.run, "val_acc") for lr, member in runs.items()}
    finite = [value for value in values.values() if math.isfinite(value)]
    if not finite:
        return math.nan
    return float(max(lr for lr, value in values.items() if math.isfinite(value)
                     and value >= max(finite) - STABLE_TOLERANCE))


def _rate_cell(failures: int, total: int, ci: tuple[float, float]) -> str:
    return f"{failures}/{total} [{100 * ci[0]:.0f}%, {100 * ci[1]:.0f}%]"


def rule_forgiving_fraction(suite: Suite, sweep: Sweep, members: list[ArmRun]) -> tuple[list[Comparison], list]:
    """Per pair, arm and seed: the fraction of the arm's grid cells whose validation accuracy is
    within FORGIVING_TOLERANCE of the best cell of either arm of the pair for that seed (one
    tolerance, one reference for both arms, so an arm with a poor best is not forgiven for it);
    a cell that failed to train is not forgiving. Compared paired over seeds."""
    comparisons = []
    # One number per arm and seed: compared once over all cells, not per cell.
    once = suite.model_copy(update={"within": [], "nuisance": None, "primary": {}})
    for pair in suite.compare:
        names = pair[:2]
        fraction: dict[tuple[str, int], float] = {}
        by_arm_seed = {(m.arm, m.seed): [] for m in members if m.arm in names}
        for m in members:
            if m.arm in names:
                by_arm_seed[m.arm, m.seed].append(metric_value(m.run, "val_acc"))
        for seed in {seed for _, seed in by_arm_seed}:
            both = [v for arm in names for v in by_arm_seed.get((arm, seed), []) if math.isfinite(v)]
            best = max(both, default=math.nan)
            for arm in names:
                values = by_arm_seed.get((arm, seed), [])
                if values:
                    fraction[arm, seed] = sum(math.isfinite(v) and v >= best - FORGIVING_TOLERANCE
                                              for v in values) / len(values)
        by_seed = [ArmRun(arm, {}, seed, _any_run([m.run for m in members if (m.arm, m.seed) == (arm, seed)]))
                   for arm, seed in fraction]
        comparisons += compare_arms(
            once.model_copy(update={"compare": [pair]}), sweep, by_seed,
            lambda member, _metric, fraction=fraction: fraction[member.arm, member.seed], kind="fraction",
            runs_of=lambda member: sorted(m.run.folder.name for m in members
                                          if (m.arm, m.seed) == (member.arm, member.seed)),
            trained={m.run.folder.name: m.run.trained for m in members})
    return comparisons, []


def _any_run(runs: list[FinishedRun]) -> FinishedRun:
    """A stand-in run for a summary number over several runs: trained if any of them trained."""
    return next((run for run in runs if run.trained), runs[0])


RULES: dict[str, Callable[[Suite, Sweep, list[ArmRun]], tuple[list[Comparison], list]]] = {
    "paired_difference": rule_paired_difference,
    "stable_lr": rule_stable_lr,
    "steps_to_target": rule_steps_to_target,
    "forgiving_fraction": rule_forgiving_fraction,
}

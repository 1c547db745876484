"""Claim analysis: a suite's runs read back by the arm that generated them, compared by its
decision rule, and turned into a verdict (docs/claims.md). The suite format is bnlab.suites.

The runs are an ordinary sweep folder; the analysis reads it back through the records module,
so a report can be rebuilt from disk at any time.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnlab.analysis.stats import (
    PROJECTION_MAX_SEEDS,
    PROJECTION_POWER,
    Paired,
    RateComparison,
    Verdict,
    paired_comparison,
    plain_words,
    rate_comparison,
    verdict,
)
from bnlab.analysis.suites import Rule, Suite, cell_label
from bnlab.config import Config
from bnlab.config.spec import Sweep
from bnlab.errors import ConfigError, RecordsError

OUTCOMES = ("supported", "not supported", "depends", "inconclusive")
FORGIVING_TOLERANCE = 0.01  # a cell is forgiving when its validation accuracy is this close to the best


@dataclass(frozen=True)
class Comparison:
    """One paired comparison of arm B against arm A (e.g. within relu, at each arm's best lr)."""

    label: str  # e.g. "model.activation=relu, train.lr=0.001" or "..., each arm at its best train.lr"
    name_a: str
    name_b: str
    paired: Paired
    verdict: Verdict
    sentence: str  # stats.plain_words, plus what was dropped or flagged
    primary: bool = False  # the claim's verdict rests on the primary comparisons
    rates: RateComparison | None = None  # runs that failed to train, per arm, among those compared
    n_dropped: int = 0  # paired seeds left out because a run of either arm failed to train
    flags: tuple[str, ...] = ()  # e.g. a best value chosen at the edge of its grid
    # What a reader needs to recompute it from runs.csv (docs/claims.md, "Comparison kinds").
    kind: str = "paired_difference"  # paired_difference | log_ratio | fraction
    metrics: tuple[str, str] = ("", "")  # the runs.csv column each arm's per-seed value comes from
    stratum: dict[str, Any] = field(default_factory=dict)  # grid axis -> value held fixed
    selection: dict[str, Any] = field(default_factory=lambda: {"selection": "fixed"})
    per_seed: list[dict[str, Any]] = field(default_factory=list)  # seed, value_a, value_b, runs_a, runs_b


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


# --- reading results back ------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRecord:
    """What the rules need of one finished run."""

    config: Config
    status: str  # records.run_status: done | diverged | failed | did-not-train
    final: dict[str, float]
    folder: Path

    @property
    def trained(self) -> bool:
        return self.status == "done"


@dataclass(frozen=True)
class ArmRun:
    """One (arm, grid cell, seed) of a claim sweep and the run that serves it, as arms.csv records
    it: the analysis selects by this record, never by matching config fields."""

    arm: str
    cell: dict[str, Any]  # grid axis -> value
    seed: int
    run: RunRecord

    def at(self, where: dict[str, Any]) -> bool:
        return all(self.cell.get(dotted) == value for dotted, value in where.items())


def read_arm_runs(folder: Path, sweep: Sweep) -> list[ArmRun]:
    """Every member of the claim sweep in `folder` with its finished run. RecordsError naming the
    run when a member's run is not part of `sweep` or has not finished."""
    from bnlab.records import ARMS, finished_summary, read_arms, run_status

    configs = {cfg.run_id(): cfg for cfg in sweep.configs}
    runs: dict[str, RunRecord] = {}
    members = []
    for row in read_arms(folder):
        run_id, where = row["run_id"], f"arm {row['arm']}, {cell_label(row['cell'])}, seed {row['seed']}"
        if run_id not in configs:
            raise RecordsError(f"{folder / ARMS}: {where}: run {run_id} is not a run of this suite's sweep")
        if run_id not in runs:
            summary = finished_summary(folder / run_id)
            if summary is None:
                raise RecordsError(f"{folder / run_id}: {where}: the run has not finished")
            runs[run_id] = RunRecord(configs[run_id], run_status(summary), summary.get("final") or {}, folder / run_id)
        members.append(ArmRun(row["arm"], row["cell"], row["seed"], runs[run_id]))
    return members


def metric_value(record: RunRecord, metric: str) -> float:
    """A run's value of `metric`; NaN for a run that did not train (diverged, failed, or a final
    train loss above chance). Such runs are counted as failures beside the comparison and their
    seeds dropped from it, never scored as chance-level accuracy inside a t-test."""
    if not record.trained:
        return math.nan
    if metric == "gap":  # generalization gap: train accuracy minus test accuracy
        return record.final["train_acc"] - record.final["test_acc"]
    if metric.startswith("eval:"):  # eval:<bn_stats>:<batch size or 'all'>, from evals.csv
        return _eval_metric(record, metric)
    return record.final.get(metric, math.nan)


def _eval_metric(record: RunRecord, metric: str) -> float:
    from bnlab.records import read_metrics_csv

    _, mode, size = metric.split(":")
    for row in read_metrics_csv(record.folder / "evals.csv"):
        if row["split"] == "test" and row["bn_stats"] == mode and (row["batch_size"] or "all") == size:
            return float(row["acc"])
    return math.nan


def steps_to(record: RunRecord, target: float) -> float:
    """First logged step whose validation accuracy reaches `target`; censored at the run's last
    step (reported as such) when it never does; NaN for a run that did not train."""
    return _first_reach(record, target)[0]


def _first_reach(record: RunRecord, target: float) -> tuple[float, bool]:
    """(steps_to, whether the target was reached at all), from one read of steps.csv."""
    from bnlab.records import read_metrics_csv

    if not record.trained:
        return math.nan, False
    last = 0
    for row in read_metrics_csv(record.folder / "steps.csv"):
        last = int(row["step"])
        if row.get("val_acc") and float(row["val_acc"]) >= target:
            return float(last), True
    return float(last), False


# --- analysis ------------------------------------------------------------------------------------

Value = Callable[[ArmRun, str], float]
RunsOf = Callable[[ArmRun], list[str]]
KINDS = ("paired_difference", "log_ratio", "fraction")
BEST_CRITERION = "the highest mean validation accuracy over the arm's runs that trained"


def _per_seed(members: list[ArmRun], arm: str, where: dict[str, Any]) -> dict[int, ArmRun]:
    """The one run of `arm` per seed at the cell values `where`; zero or several is an error."""
    chosen: dict[int, ArmRun] = {}
    for member in members:
        if member.arm == arm and member.at(where):
            if member.seed in chosen:
                raise ConfigError(f"arm {arm} at {cell_label(where)}, seed {member.seed}: several runs "
                                  f"({chosen[member.seed].run.folder.name}, {member.run.folder.name}); a comparison "
                                  "needs exactly one: compare within the grid axes that tell them apart")
            chosen[member.seed] = member
    if not chosen:
        raise ConfigError(f"arm {arm} at {cell_label(where)}: no runs to compare")
    return chosen


def _strata(suite: Suite, sweep: Sweep) -> list[dict[str, Any]]:
    axes = {dotted: sweep.axes[dotted] for dotted in suite.within}
    return [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())] or [{}]


def _mean_val(members: list[ArmRun]) -> float:
    """Mean validation accuracy over the runs that trained; -inf when none did."""
    finite = [v for v in (metric_value(m.run, "val_acc") for m in members) if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else -math.inf


def _best_nuisance(members: list[ArmRun], nuisance: str, values: list[Any]) -> Any:
    """The nuisance value with the best mean validation accuracy: chosen on val, never on test."""
    return max(values, key=lambda value: _mean_val([m for m in members if m.cell.get(nuisance) == value]))


def _edge_flag(arm: str, nuisance: str, best: Any, values: list[Any]) -> str | None:
    if len(values) > 1 and best in (values[0], values[-1]):
        return (f"{arm}'s best {nuisance} ({best}) is at the edge of its grid ({values[0]} to {values[-1]}): "
                "its true best may lie beyond")
    return None


def compare_arms(suite: Suite, sweep: Sweep, members: list[ArmRun], value: Value, kind: str = "paired_difference",
                 runs_of: RunsOf | None = None, trained: dict[str, bool] | None = None) -> list[Comparison]:
    """Every (A, B) pair, per stratum, at each shared nuisance value and at each arm's best.
    `value` gives a member's per-seed value (for log_ratio the quantity whose ratio B / A is
    compared); `runs_of` the run ids it came from (its own run unless said otherwise); `trained`
    whether each run trained (by run id). Failures are counted over every run a comparison reads."""
    rule = suite.rule
    comparisons = []
    settings: list[Any] = [None]
    if suite.nuisance:
        settings = [*sweep.axes[suite.nuisance], "best"]
    for stratum in _strata(suite, sweep):
        for pair in suite.compare:
            a_name, b_name = pair[:2]
            metric_a = suite.arms[a_name].get("metric", rule.metric)
            metric_b = suite.arms[b_name].get("metric", rule.metric)
            for setting in settings:
                label_values = dict(stratum)
                fixed = dict(stratum)
                selection: dict[str, Any] = {"selection": "fixed"}
                flags = []
                if setting == "best":
                    candidates = sweep.axes[suite.nuisance]
                    picks = {}
                    for arm in (a_name, b_name):
                        in_stratum = [m for m in members if m.arm == arm and m.at(stratum)]
                        picks[arm] = _best_nuisance(in_stratum, suite.nuisance, candidates)
                        flags.append(_edge_flag(arm, suite.nuisance, picks[arm], candidates))
                    chosen_a = _per_seed(members, a_name, {**stratum, suite.nuisance: picks[a_name]})
                    chosen_b = _per_seed(members, b_name, {**stratum, suite.nuisance: picks[b_name]})
                    label_values[suite.nuisance] = (f"best ({a_name} {picks[a_name]}, {b_name} {picks[b_name]}; "
                                                    "chosen on val)")
                    selection = {"selection": "best", "axis": suite.nuisance, "criterion": BEST_CRITERION,
                                 "candidates": list(candidates), "picked": {a_name: picks[a_name],
                                                                            b_name: picks[b_name]}}
                else:
                    fixed |= {suite.nuisance: setting} if setting is not None else {}
                    chosen_a, chosen_b = _per_seed(members, a_name, fixed), _per_seed(members, b_name, fixed)
                    if setting is not None:
                        label_values[suite.nuisance] = setting
                facts = Comparison(cell_label(label_values), a_name, b_name, paired_comparison([], [], rule.margin),
                                   Verdict("inconclusive", "too few seeds", None), "",
                                   len(pair) == 2 and _is_primary(suite, stratum, setting),
                                   flags=tuple(flag for flag in flags if flag), kind=kind,
                                   metrics=(metric_a, metric_b), stratum=fixed, selection=selection)
                comparisons.append(_compare(suite, facts, chosen_a, chosen_b, value,
                                            runs_of or (lambda member: [member.run.folder.name]),
                                            trained or {m.run.folder.name: m.run.trained for m in members}))
    return comparisons


def _compare(suite: Suite, facts: Comparison, chosen_a: dict[int, ArmRun], chosen_b: dict[int, ArmRun],
             value: Value, runs_of: RunsOf, trained: dict[str, bool]) -> Comparison:
    """`facts` (what is compared, and how the runs were chosen) completed with the statistics."""
    from dataclasses import replace

    rule, a_name, b_name, metrics, flags = suite.rule, facts.name_a, facts.name_b, facts.metrics, facts.flags
    seeds = sorted(chosen_a.keys() & chosen_b.keys())
    per_seed = [{"seed": s, "value_a": value(chosen_a[s], metrics[0]), "value_b": value(chosen_b[s], metrics[1]),
                 "runs_a": runs_of(chosen_a[s]), "runs_b": runs_of(chosen_b[s])} for s in seeds]
    statistic = math.log if facts.kind == "log_ratio" else float
    values_a = [statistic(row["value_a"]) if math.isfinite(row["value_a"]) else math.nan for row in per_seed]
    values_b = [statistic(row["value_b"]) if math.isfinite(row["value_b"]) else math.nan for row in per_seed]
    paired = paired_comparison(values_a, values_b, rule.margin)
    outcome = verdict(paired, rule.margin, rule.direction)
    counted_a = [run_id for row in per_seed for run_id in row["runs_a"]]
    counted_b = [run_id for row in per_seed for run_id in row["runs_b"]]
    failed_a = sum(not trained[run_id] for run_id in counted_a)
    failed_b = sum(not trained[run_id] for run_id in counted_b)
    rates = rate_comparison(failed_a, len(counted_a), failed_b, len(counted_b))
    sentence = plain_words(paired, outcome, name_a=a_name, name_b=b_name, metric=_metric_words(rule),
                           unit=rule.unit, scale=rule.scale, margin=rule.margin, direction=rule.direction)
    n_dropped = len(seeds) - paired.n
    notes = list(flags)
    if failed_a or failed_b:
        notes.append(_rate_words(a_name, b_name, rates))
    if n_dropped:
        notes.append(f"{n_dropped} paired seed(s) where a run failed to train are left out of the difference, "
                     "which can favour the arm that failed")
    if notes:
        sentence += " " + " ".join(f"{note[0].upper()}{note[1:]}." for note in notes)
    return replace(facts, paired=paired, verdict=outcome, sentence=sentence, rates=rates, n_dropped=n_dropped,
                   per_seed=per_seed)


def _rate_words(a_name: str, b_name: str, rates: RateComparison) -> str:
    def arm(name: str, failures: int, total: int, ci: tuple[float, float]) -> str:
        return f"{name} {failures}/{total} (95% CI {100 * ci[0]:.0f}% to {100 * ci[1]:.0f}%)"

    text = (f"runs that failed to train: {arm(a_name, rates.failures_a, rates.total_a, rates.ci_a)}, "
            f"{arm(b_name, rates.failures_b, rates.total_b, rates.ci_b)}; Fisher exact p = {rates.p_value:.3g}")
    if not rates.can_reach_significance:
        text += (f", and with {rates.total_a} against {rates.total_b} runs no split of failures could reach "
                 f"p < 0.05 (the smallest possible p is {rates.min_p:.3g})")
    return text


def _is_primary(suite: Suite, stratum: dict[str, Any], setting: Any) -> bool:
    for dotted, wanted in suite.primary.items():
        if dotted == suite.nuisance:
            if setting != wanted:
                return False
        elif dotted in stratum and stratum[dotted] != wanted:
            return False
    return not (suite.nuisance and suite.nuisance not in suite.primary and setting != "best")


def _metric_words(rule: Rule) -> str:
    words = {"test_acc": "test accuracy", "val_acc": "validation accuracy", "gap": "train-test accuracy gap",
             "test_loss": "test loss", "steps": "log steps to target", "forgiving": "fraction of forgiving cells"}
    if rule.metric.startswith("eval:"):
        _, mode, size = rule.metric.split(":")
        return f"test accuracy with {mode} statistics at eval batch {size}"
    return words.get(rule.metric, rule.metric)


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


def _outcome_words(outcome: str, primary: Sequence[Comparison]) -> str:
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


# --- the rules -----------------------------------------------------------------------------------


def _of_run(metric_of: Callable[[RunRecord, str], float]) -> Value:
    return lambda member, metric: metric_of(member.run, metric)


def rule_paired_difference(suite: Suite, sweep: Sweep, members: list[ArmRun]) -> tuple[list[Comparison], list]:
    return compare_arms(suite, sweep, members, _of_run(metric_value)), []


def rule_steps_to_target(suite: Suite, sweep: Sweep, members: list[ArmRun]) -> tuple[list[Comparison], list]:
    """Paired log-ratio of steps to the target validation accuracy (B / A), said as a ratio."""
    target = suite.rule.target or 0.97

    def steps(member: ArmRun, _metric: str) -> float:
        return max(steps_to(member.run, target), 1.0)

    comparisons = compare_arms(suite, sweep, members, steps, kind="log_ratio")
    return [_as_ratio(c, target, suite.rule.margin, suite.rule.direction) for c in comparisons], []


def _as_ratio(c: Comparison, target: float, margin: float, direction: int) -> Comparison:
    """The comparison's sentence in ratios B / A (the statistic is a mean log-ratio), with the
    CI's ends beside the margin as a ratio too; the notes plain_words added are kept."""
    from dataclasses import replace

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
    sentence = (f"{c.name_b} reached {100 * target:.0f}% validation accuracy in {ratio(p.diff_mean)} the "
                f"steps of {c.name_a}{ci} over {p.n} paired seed(s); {tail}.")
    notes = c.sentence.split(" over ", 1)[1].split(". ", 1)
    return replace(c, sentence=sentence + (" " + notes[1] if len(notes) > 1 else ""))


def rule_stable_lr(suite: Suite, sweep: Sweep, members: list[ArmRun]) -> tuple[list[Comparison], list]:
    """Failures per arm and lr (exact intervals, Fisher exact), each arm's stable window, and the
    paired accuracy difference at the claim's lr (`primary`)."""
    import pandas as pd

    comparisons = compare_arms(suite, sweep, members, _of_run(metric_value))
    lr_field = suite.nuisance or "train.lr"
    lrs = sweep.axes[lr_field]
    rows, windows = [], []
    for stratum in _strata(suite, sweep):
        for pair in suite.compare:
            a_name, b_name = pair[:2]
            stable = {}
            at_lr: dict[str, dict[Any, list[ArmRun]]] = {}
            for arm_name in (a_name, b_name):
                at_lr[arm_name] = {lr: list(_per_seed(members, arm_name, {**stratum, lr_field: lr}).values())
                                   for lr in lrs}
                best = max((_mean_val(runs) for runs in at_lr[arm_name].values()), default=-math.inf)
                stable[arm_name] = [lr for lr, runs in at_lr[arm_name].items()
                                    if all(m.run.trained for m in runs) and _mean_val(runs) >= best - 0.01]
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
    tables = [("Runs that failed to train (diverged, failed, or final train loss above ln 10), per lr, with exact "
               "95% intervals; a Fisher p can never go below the smallest reachable p with these runs",
               pd.DataFrame(rows)),
              ("Stable learning-rate window per arm (no failures, accuracy within 1 pp of the arm's best)",
               pd.DataFrame(windows))]
    return comparisons, tables


def _rate_cell(failures: int, total: int, ci: tuple[float, float]) -> str:
    return f"{failures}/{total} [{100 * ci[0]:.0f}%, {100 * ci[1]:.0f}%]"


def rule_forgiving_fraction(suite: Suite, sweep: Sweep, members: list[ArmRun]) -> tuple[list[Comparison], list]:
    """Per arm and seed: the fraction of grid cells whose validation accuracy is within 1 pp of
    that arm's best cell (docs/literature.md C8); a cell that failed to train is not forgiving. Compared
    paired over seeds."""
    fraction: dict[tuple[str, int], float] = {}
    for arm_name in {name for pair in suite.compare for name in pair[:2]}:
        arm = [m for m in members if m.arm == arm_name]
        for seed in {m.seed for m in arm}:
            values = [metric_value(m.run, "val_acc") for m in arm if m.seed == seed]
            best = max((v for v in values if math.isfinite(v)), default=math.nan)
            fraction[arm_name, seed] = sum(math.isfinite(v) and v >= best - FORGIVING_TOLERANCE
                                           for v in values) / len(values)
    # One number per arm and seed: compared once over all cells, not per cell.
    once = suite.model_copy(update={"within": [], "nuisance": None, "primary": {}})
    by_seed = [ArmRun(arm, {}, seed, _any_run(members, arm, seed)) for arm, seed in fraction]
    return compare_arms(once, sweep, by_seed, lambda member, _metric: fraction[member.arm, member.seed],
                        kind="fraction", runs_of=lambda member: sorted(
                            m.run.folder.name for m in members if (m.arm, m.seed) == (member.arm, member.seed)),
                        trained={m.run.folder.name: m.run.trained for m in members}), []


def _any_run(members: list[ArmRun], arm: str, seed: int) -> RunRecord:
    """A stand-in run for an (arm, seed) summary number: trained if any of its cells trained."""
    runs = [m.run for m in members if m.arm == arm and m.seed == seed]
    return next((run for run in runs if run.trained), runs[0])


# --- what a reader needs to recheck a verdict -------------------------------------------------------


def runs_table(suite: Suite, sweep: Sweep, folder: Path, comparisons: Sequence[Comparison]) -> list[dict[str, Any]]:
    """runs.csv of a finding: one row per (arm, run), i.e. every run an arm uses, once: its id,
    arm, dataset, seed, every config field an arm or grid sets (lists as JSON), status, val_acc,
    test_acc and every metric a comparison of that arm reads (steps with `censored`). A metric
    of a run that did not train is left empty: no comparison uses it."""
    from bnlab.config import cell_values

    metrics: dict[str, set[str]] = {}
    for c in comparisons:
        for arm, metric in zip((c.name_a, c.name_b), c.metrics, strict=True):
            metrics.setdefault(arm, set()).add(metric)
    target = suite.rule.target or 0.97
    rows, seen = [], set()
    for member in read_arm_runs(folder, sweep):
        run = member.run
        if member.arm not in metrics or (member.arm, run.folder.name) in seen:
            continue
        seen.add((member.arm, run.folder.name))
        fields = {dotted: json.dumps(value) if isinstance(value, list) else value
                  for dotted, value in cell_values(run.config, list(sweep.axes)).items()}
        row = {"run_id": run.folder.name, "arm": member.arm, "dataset": run.config.data.dataset,
               "seed": member.seed, **fields, "status": run.status, "val_acc": run.final.get("val_acc"),
               "test_acc": run.final.get("test_acc")}
        for metric in sorted(metrics[member.arm] - {"val_acc", "test_acc", "forgiving"}):
            if metric == "steps":
                steps, reached = _first_reach(run, target)
                row |= {"steps": steps, "censored": run.trained and not reached}
            else:
                row[metric] = metric_value(run, metric)
        rows.append(row)
    return rows


def comparison_record(c: Comparison, rule: Rule) -> dict[str, Any]:
    """One comparison as verdict.json keeps it (docs/claims.md, "Comparison kinds")."""
    record: dict[str, Any] = {"a": c.name_a, "b": c.name_b, "kind": c.kind, "label": c.label}
    if c.kind == "fraction":
        record |= {"metric": "val_acc", "tolerance": FORGIVING_TOLERANCE}
    elif c.kind == "log_ratio":
        record |= {"metric": "steps", "target": rule.target or 0.97}
    elif c.metrics[0] == c.metrics[1]:
        record["metric"] = c.metrics[0]
    else:
        record |= {"metric_a": c.metrics[0], "metric_b": c.metrics[1]}
    p, rates = c.paired, c.rates
    record |= {"stratum": c.stratum, "selection": c.selection, "primary": c.primary, "margin": rule.margin,
               "direction": rule.direction, "per_seed": c.per_seed, "n": p.n, "n_dropped": c.n_dropped,
               "mean": p.diff_mean, "ci": list(p.ci95), "ci90": list(p.ci90), "outcome": c.verdict.outcome,
               "reason": c.verdict.reason, "seeds_to_settle": c.verdict.seeds_needed, "flags": list(c.flags)}
    if rates is not None:
        record["failures"] = {"a": rates.failures_a, "total_a": rates.total_a, "b": rates.failures_b,
                              "total_b": rates.total_b, "ci_a": list(rates.ci_a), "ci_b": list(rates.ci_b),
                              "fisher_p": rates.p_value, "smallest_reachable_p": rates.min_p,
                              "runs_a": sorted({r for row in c.per_seed for r in row["runs_a"]}),
                              "runs_b": sorted({r for row in c.per_seed for r in row["runs_b"]})}
    return record


RULES: dict[str, Callable[[Suite, Sweep, list[ArmRun]], tuple[list[Comparison], list]]] = {
    "paired_difference": rule_paired_difference,
    "stable_lr": rule_stable_lr,
    "steps_to_target": rule_steps_to_target,
    "forgiving_fraction": rule_forgiving_fraction,
}


def analyze(suite: Suite, sweep: Sweep, folder: Path, budget: str, command: str,
            wall_seconds: float | None = None) -> ClaimResult:
    comparisons, tables = RULES[suite.rule.name](suite, sweep, read_arm_runs(folder, sweep))
    primary = [c for c in comparisons if c.primary]
    if not primary:
        raise ConfigError(f"claim {suite.name}: primary {suite.primary or '(each arm at its best)'} matches no "
                          f"comparison; comparisons: {'; '.join(sorted({c.label for c in comparisons}))}")
    outcome = combine(comparisons)
    summary = " ".join([_outcome_words(outcome, primary), *(c.sentence for c in primary[:2])]).strip()
    if len(primary) > 2:
        summary += f" ({len(primary) - 2} more primary comparison(s) in the table.)"
    return ClaimResult(
        name=suite.name, claim=suite.claim, design=suite.design, budget=budget, outcome=outcome, summary=summary,
        rule=suite.rule.model_dump(), comparisons=comparisons, tables=tables, deviations=list(suite.deviations),
        literature=_literature_note(suite, outcome), expected=suite.expected,
        disagrees=disagrees(suite.expected, outcome), command=command, seeds=list(sweep.seeds),
        runs=len(sweep.configs), wall_seconds=wall_seconds,
    )

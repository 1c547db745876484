"""Paired comparisons of two arms of a claim suite: which runs are compared (per stratum, at each
shared nuisance value and at each arm's best), and the statistics and sentence for each."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bnlab.analysis.arms import ArmRun, metric_value
from bnlab.analysis.stats import (
    Paired,
    RateComparison,
    Verdict,
    paired_comparison,
    plain_words,
    rate_comparison,
    verdict,
)
from bnlab.analysis.suites import Guard, Suite, cell_label
from bnlab.config.spec import Sweep, grid_cells
from bnlab.errors import ConfigError
from bnlab.records import MAIN_PANEL


@dataclass(frozen=True)
class Comparison:
    """One paired comparison of arm B against arm A (e.g. within relu, at each arm's best lr), or a
    contrast over several (panel, arm, cell) terms (name_b its name, name_a empty)."""

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
    panel: str = MAIN_PANEL
    guard: dict[str, Any] | None = None  # a guarded rule's check on the same runs (guard_check)
    terms: tuple[dict[str, Any], ...] = ()  # a contrast's (panel, arm, cell, weight) terms
    margin: float | None = None  # a contrast's own margin and direction, where not the rule's
    direction: int | None = None
    needs: str | None = None  # a contrast whose "not supported" needs another to hold (suites.Contrast)
    unit: str | None = None  # a contrast's own unit and scale, where not the rule's
    scale: float | None = None


Value = Callable[[ArmRun, str], float]
RunsOf = Callable[[ArmRun], list[str]]
KINDS = ("paired_difference", "log_ratio", "fraction", "contrast", "largest_stable_lr")
LOG_KINDS = ("log_ratio", "largest_stable_lr")  # compared as ln(B / A)
BEST_CRITERION = "the highest mean validation accuracy over the arm's runs that trained"


def per_seed(members: list[ArmRun], arm: str, where: dict[str, Any]) -> dict[int, ArmRun]:
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


def strata(suite: Suite, sweep: Sweep) -> list[dict[str, Any]]:
    return grid_cells({dotted: sweep.axes[dotted] for dotted in suite.within})


def mean_val(members: list[ArmRun], metric: str = "val_acc", lower: bool = False) -> float:
    """Mean `metric` (validation accuracy by default) over the runs that have it; the worst
    possible (-inf, or +inf when `lower` is better) when none does."""
    finite = [v for v in (metric_value(m.run, metric) for m in members) if math.isfinite(v)]
    if not finite:
        return math.inf if lower else -math.inf
    return sum(finite) / len(finite)


def best_nuisance(members: list[ArmRun], nuisance: str, values: list[Any], metric: str = "val_acc",
                  lower: bool = False) -> Any:
    """The nuisance value with the best mean `metric` (highest, or lowest with `lower`): chosen on
    validation accuracy by default, never on test."""
    def mean_at(value: Any) -> float:
        return mean_val([m for m in members if m.cell.get(nuisance) == value], metric, lower)

    return (min if lower else max)(values, key=mean_at)


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
    for stratum in strata(suite, sweep):
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
                        picks[arm] = best_nuisance(in_stratum, suite.nuisance, candidates)
                        flags.append(_edge_flag(arm, suite.nuisance, picks[arm], candidates))
                    chosen_a = per_seed(members, a_name, {**stratum, suite.nuisance: picks[a_name]})
                    chosen_b = per_seed(members, b_name, {**stratum, suite.nuisance: picks[b_name]})
                    label_values[suite.nuisance] = (f"best ({a_name} {picks[a_name]}, {b_name} {picks[b_name]}; "
                                                    "chosen on val)")
                    selection = {"selection": "best", "axis": suite.nuisance, "criterion": BEST_CRITERION,
                                 "candidates": list(candidates), "picked": {a_name: picks[a_name],
                                                                            b_name: picks[b_name]}}
                else:
                    fixed |= {suite.nuisance: setting} if setting is not None else {}
                    chosen_a, chosen_b = per_seed(members, a_name, fixed), per_seed(members, b_name, fixed)
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
    statistic = math.log if facts.kind in LOG_KINDS else float
    values_a = [statistic(row["value_a"]) if math.isfinite(row["value_a"]) else math.nan for row in per_seed]
    values_b = [statistic(row["value_b"]) if math.isfinite(row["value_b"]) else math.nan for row in per_seed]
    paired = paired_comparison(values_a, values_b, rule.margin)
    outcome = verdict(paired, rule.margin, rule.direction)
    counted_a = [run_id for row in per_seed for run_id in row["runs_a"]]
    counted_b = [run_id for row in per_seed for run_id in row["runs_b"]]
    failed_a = sum(not trained[run_id] for run_id in counted_a)
    failed_b = sum(not trained[run_id] for run_id in counted_b)
    rates = rate_comparison(failed_a, len(counted_a), failed_b, len(counted_b))
    sentence = plain_words(paired, outcome, name_a=a_name, name_b=b_name, metric=metric_words(rule.metric),
                           unit=rule.unit, scale=rule.scale, margin=rule.margin, direction=rule.direction)
    guard = None
    if rule.guard is not None and facts.kind == "paired_difference":
        guard = guard_check(rule.guard, [{"seed": s, "value_a": value(chosen_a[s], rule.guard.metric),
                                          "value_b": value(chosen_b[s], rule.guard.metric)} for s in seeds])
        outcome = guarded(outcome, guard["outcome"])
        sentence += " " + guard_words(rule.guard, guard, a_name, b_name, outcome)
    n_dropped = len(seeds) - paired.n
    notes = list(flags)
    if failed_a or failed_b:
        notes.append(_rate_words(a_name, b_name, rates))
    unreached = sum(all(trained[run_id] for run_id in row["runs_a"] + row["runs_b"])
                    and not (math.isfinite(row["value_a"]) and math.isfinite(row["value_b"])) for row in per_seed)
    if n_dropped - unreached:
        notes.append(f"{n_dropped - unreached} paired seed(s) where a run failed to train are left out of the "
                     "difference, which can favour the arm that failed")
    if unreached:
        notes.append(f"{unreached} paired seed(s) whose runs trained but have no value of "
                     f"{metric_words(metrics[0])} (a run never reached its condition, see runs.csv) are left out")
    if notes:
        sentence += " " + " ".join(f"{note[0].upper()}{note[1:]}." for note in notes)
    return replace(facts, paired=paired, verdict=outcome, sentence=sentence, rates=rates, n_dropped=n_dropped,
                   per_seed=per_seed, guard=guard)


def guard_check(guard: Guard, per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """The guarding metric's paired difference B - A on the comparison's own runs, and whether a
    move against the guard's direction by its margin or more is excluded (`holds`: the 95% CI's
    end on that side stays short of it), established (`fails`: the whole CI is beyond it) or
    neither (`unsettled`)."""
    paired = paired_comparison([row["value_a"] for row in per_seed], [row["value_b"] for row in per_seed],
                               guard.margin)
    outcome = "unsettled"
    if paired.n >= 2:
        low, high = sorted(guard.direction * x for x in paired.ci95)
        outcome = "holds" if low > -guard.margin else "fails" if high < -guard.margin else "unsettled"
    return {"metric": guard.metric, "margin": guard.margin, "direction": guard.direction, "per_seed": per_seed,
            "n": paired.n, "mean": paired.diff_mean, "ci": list(paired.ci95), "outcome": outcome}


def guarded(outcome: Verdict, guard: str) -> Verdict:
    """A guarded rule's verdict: not supported when the guard fails; supported only when the
    comparison is and the guard holds; otherwise what the comparison says, or inconclusive where
    the guard is unsettled under a supported comparison."""
    if guard == "fails":
        return Verdict("not supported", "guard fails", None)
    if outcome.outcome == "supported" and guard != "holds":
        return Verdict("inconclusive", "guard unsettled", None)
    return outcome


def guard_words(guard: Guard, record: dict[str, Any], a_name: str, b_name: str, outcome: Verdict) -> str:
    if record["n"] < 2:
        return f"Guard ({guard.metric}): fewer than 2 paired seeds, so it cannot be checked."
    move = "drop" if guard.direction > 0 else "rise"
    low, high = (f"{x * guard.scale:.2f}" for x in record["ci"])
    head = (f"Guard: {guard.metric} of {b_name} minus {a_name} is {record['mean'] * guard.scale:.2f} {guard.unit} "
            f"(95% CI {low} to {high})")
    size = f"{guard.margin * guard.scale:g} {guard.unit}"
    if record["outcome"] == "holds":
        return f"{head}: a {move} of {size} or more is excluded, so the guard holds."
    if record["outcome"] == "fails":
        return f"{head}: a {move} of at least {size} is established, so the claim is not supported here."
    tail = ", so the claim cannot be called supported here" if outcome.reason == "guard unsettled" else ""
    return f"{head}: a {move} of {size} or more is neither excluded nor established{tail}."


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


def metric_words(metric: str) -> str:
    words = {"test_acc": "test accuracy", "val_acc": "validation accuracy", "gap": "train-test accuracy gap",
             "test_loss": "test loss", "steps": "log steps to target", "forgiving": "fraction of forgiving cells",
             "drift": "input drift", "ics_l2": "gradient ICS (L2)", "variance_shift": "variance shift"}
    kind, _, rest = metric.partition(":")
    parts = rest.split(":")
    checkpoint = {"steps": lambda: f"steps to {float(parts[0]):.0%} validation accuracy",
                  "log_steps": lambda: f"log steps to {float(parts[0]):.0%} validation accuracy",
                  "auc": lambda: f"area under the validation curve over {parts[0]} steps",
                  "matched": lambda: f"{'eval-mode train-test gap' if parts[0] == 'gap' else parts[0]} at the first "
                                     f"checkpoint with eval-mode train NLL ≤ {parts[-1]}",
                  "disagree": lambda: f"disagreement with running statistics, {parts[0]} at batch {parts[-1]}"}
    if kind in checkpoint and rest:
        return checkpoint[kind]()
    if metric.startswith("eval:"):
        _, mode, size = metric.split(":")
        return f"test accuracy with {mode} statistics at eval batch {size}"
    return words.get(metric, metric)

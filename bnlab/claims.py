"""Claim suites: a sweep, the arms to compare, and a decision rule, turned into a verdict.

A suite (configs/claims/<name>.yaml, format in docs/claims.md) names a base config, shared grid
axes, named arms (field values added to the base), budgets, and a `rule:` naming one of RULES
below. The runs are an ordinary sweep folder; the analysis reads it back through the records
module, so a report can be rebuilt from disk at any time.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bnlab.config import Config, apply_overrides, cell_values, describe, read_yaml_mapping, set_dotted
from bnlab.errors import ConfigError
from bnlab.spec import Sweep
from bnlab.stats import Paired, Verdict, paired_comparison, plain_words, rate_comparison, verdict

CLAIMS_DIR = Path(__file__).resolve().parent.parent / "configs" / "claims"
CHANCE_LOSS = math.log(10)  # a run whose final train loss is above chance level did not train
CHANCE_ACC = 0.1


@dataclass(frozen=True)
class Comparison:
    """One paired comparison of arm B against arm A (e.g. within relu, at each arm's best lr)."""

    label: str  # e.g. "model.activation=relu, train.lr=0.001" or "..., each arm at its best train.lr"
    name_a: str
    name_b: str
    paired: Paired
    verdict: Verdict
    sentence: str  # stats.plain_words
    primary: bool = False  # the claim's verdict rests on the primary comparisons


@dataclass(frozen=True)
class ClaimResult:
    name: str  # suite name, e.g. "placement"
    claim: str  # the claim as practitioners hear it
    design: str  # e.g. "LITERATURE.md C1"
    budget: str  # smoke | quick | full
    outcome: str  # supported | not supported | inconclusive
    summary: str  # one or two plain sentences with the effect size and CI
    rule: dict[str, Any]  # name, metric, margin, direction
    comparisons: list[Comparison] = field(default_factory=list)
    tables: list[tuple[str, Any]] = field(default_factory=list)  # (title, pandas DataFrame): rates, windows
    deviations: list[str] = field(default_factory=list)  # where the suite departs from its design
    literature: str = ""  # what the literature expects, and whether this verdict disagrees
    command: str = ""  # the exact command that produced it
    seeds: list[int] = field(default_factory=list)
    runs: int = 0
    wall_seconds: float | None = None  # of the command that produced it (resumed: its last invocation)


# --- the suite format ----------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Budget(_Strict):
    seeds: list[int] = Field(min_length=1)
    set: dict[str, Any] = Field(default_factory=dict)  # dotted field -> value, applied to the base
    grid: dict[str, list[Any]] = Field(default_factory=dict)  # replaces shared axes (e.g. fewer lrs)


class Rule(_Strict):
    name: Literal["paired_difference", "stable_lr", "steps_to_target", "forgiving_fraction"]
    metric: str = "test_acc"  # see metric_values
    margin: float = Field(gt=0)
    direction: Literal[1, -1] = 1  # +1: the claim says B's metric is higher
    unit: str = "pp"
    scale: float = 100.0  # metric -> unit (accuracy fraction -> percentage points)
    target: float | None = None  # steps_to_target: validation accuracy to reach
    ratio: float | None = None  # stable_lr: B's largest stable lr at least this many times A's


class Suite(_Strict):
    name: str
    claim: str
    design: str
    literature: str = ""
    expected: Literal["supported", "not supported", "inconclusive", "mixed"] | None = None
    base: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)  # shared axes, crossed with every arm
    # Arm name -> dotted field values; the reserved key `metric` makes an arm a measurement of the
    # same runs instead (inference-stats compares evaluation modes of one model).
    arms: dict[str, dict[str, Any]] = Field(min_length=2)
    # (A, B[, "secondary"]): B against A; the verdict rests on the pairs not marked secondary.
    compare: list[tuple[str, str] | tuple[str, str, Literal["secondary"]]] = Field(min_length=1)
    within: list[str] = Field(default_factory=list)  # separate comparisons per value of these axes
    nuisance: str | None = None  # an axis tuned away: also compare each arm at its best value on val
    primary: dict[str, Any] = Field(default_factory=dict)  # within/nuisance values ("best") of the verdict
    rule: Rule
    budgets: dict[Literal["full", "quick", "smoke"], Budget]
    deviations: list[str] = Field(default_factory=list)


def suite_path(name: str) -> Path:
    path = CLAIMS_DIR / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"claim {name!r}: no such suite; available: {', '.join(suite_names())}")
    return path


def suite_names() -> list[str]:
    return sorted(path.stem for path in CLAIMS_DIR.glob("*.yaml"))


def load_suite(path: Path) -> Suite:
    raw = read_yaml_mapping(path)
    try:
        suite = Suite.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"{path}: {where}: {first['msg'].removeprefix('Value error, ')}") from None
    for pair in suite.compare:
        for arm in pair[:2]:
            if arm not in suite.arms:
                raise ConfigError(f"{path}: compare: unknown arm {arm!r}; arms: {', '.join(suite.arms)}")
    return suite


def suite_sweep(suite: Suite, budget: str, overrides: Sequence[str], spec_text: str) -> Sweep:
    """Every run of the suite at `budget`: base + budget settings + user overrides, crossed with
    the arms, the shared axes and the seeds. Validated up front like any sweep."""
    if budget not in suite.budgets:
        raise ConfigError(f"--budget {budget}: not defined for {suite.name}; allowed: {', '.join(suite.budgets)}")
    plan = suite.budgets[budget]
    base_raw = copy.deepcopy(suite.base)
    for dotted, value in plan.set.items():
        set_dotted(base_raw, dotted.split("."), value)
    name = f"claim-{suite.name}-{budget}"
    base_raw["name"] = name
    apply_overrides(base_raw, overrides)
    try:
        base = Config.model_validate(base_raw)
    except ValidationError as err:
        raise ConfigError(f"claim {suite.name}: base: {describe(err)}") from None
    grid = {**suite.grid, **plan.grid}
    configs: dict[str, Config] = {}  # by run id: arms that only differ in `metric` share runs
    for arm_name, arm in suite.arms.items():
        for cell in itertools.product(*grid.values()):
            raw = copy.deepcopy(base_raw)
            for dotted, value in [*_fields(arm).items(), *zip(grid, cell, strict=True)]:
                set_dotted(raw, dotted.split("."), value)
            for seed in plan.seeds:
                raw["seed"] = seed
                try:
                    cfg = Config.model_validate(raw)
                except ValidationError as err:
                    raise ConfigError(f"claim {suite.name}: arm {arm_name}: {describe(err)}") from None
                configs.setdefault(cfg.run_id(), cfg)
    arm_fields = sorted({dotted for arm in suite.arms.values() for dotted in _fields(arm)})
    axes = {dotted: list({repr(arm.get(dotted)): arm.get(dotted) for arm in suite.arms.values()}.values())
            for dotted in arm_fields}
    axes |= grid
    return Sweep(name=name, spec_text=spec_text, base=base, axes=axes, seeds=list(plan.seeds),
                 configs=list(configs.values()))


def _fields(arm: dict[str, Any]) -> dict[str, Any]:
    return {dotted: value for dotted, value in arm.items() if dotted != "metric"}


# --- reading results back ------------------------------------------------------------------------


@dataclass
class RunRecord:
    """What the rules need of one finished run."""

    config: Config
    status: str
    final: dict[str, float]
    folder: Path

    @property
    def trained(self) -> bool:
        return self.status == "done" and self.final.get("train_loss", math.inf) <= CHANCE_LOSS


def read_records(folder: Path, sweep: Sweep) -> list[RunRecord]:
    from bnlab.records import finished_summary

    records = []
    for cfg in sweep.configs:
        summary = finished_summary(folder / cfg.run_id())
        if summary is not None:
            records.append(RunRecord(cfg, summary["status"], summary.get("final") or {}, folder / cfg.run_id()))
    return records


def metric_value(record: RunRecord, metric: str) -> float:
    """A run's value of `metric`. Accuracy of a run that diverged or failed is chance level: a
    failure to train counts against its arm instead of vanishing from the comparison."""
    if metric == "gap":  # generalization gap: train accuracy minus test accuracy
        if record.status != "done":
            return math.nan
        return record.final["train_acc"] - record.final["test_acc"]
    if metric.startswith("eval:"):  # eval:<bn_stats>:<batch size or 'all'>, from evals.csv
        return _eval_metric(record, metric)
    if record.status != "done":
        return CHANCE_ACC if metric.endswith("_acc") else math.nan
    return record.final.get(metric, math.nan)


def _eval_metric(record: RunRecord, metric: str) -> float:
    import csv

    _, mode, size = metric.split(":")
    if record.status != "done":
        return CHANCE_ACC
    with (record.folder / "evals.csv").open() as handle:
        for row in csv.DictReader(handle):
            if row["split"] == "test" and row["bn_stats"] == mode and (row["batch_size"] or "all") == size:
                return float(row["acc"])
    return math.nan


def steps_to(record: RunRecord, target: float) -> float:
    """First logged step whose validation accuracy reaches `target`; censored at the run's last
    step (reported as such) when it never does."""
    import csv

    if record.status != "done":
        return math.nan
    last = 0
    with (record.folder / "steps.csv").open() as handle:
        for row in csv.DictReader(handle):
            last = int(row["step"])
            if row.get("val_acc") and float(row["val_acc"]) >= target:
                return float(last)
    return float(last)


# --- analysis ------------------------------------------------------------------------------------


def _at(records: list[RunRecord], dotted: str, value: Any) -> list[RunRecord]:
    return [r for r in records if cell_values(r.config, [dotted])[dotted] == value]


def _arm_records(records: list[RunRecord], arm: dict[str, Any]) -> list[RunRecord]:
    fields = _fields(arm)
    return [r for r in records if cell_values(r.config, list(fields)) == fields]


def _strata(suite: Suite, sweep: Sweep) -> list[dict[str, Any]]:
    axes = {dotted: sweep.axes[dotted] for dotted in suite.within}
    return [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())] or [{}]


def _label(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items()) or "all runs"


def _best_nuisance(records: list[RunRecord], nuisance: str, values: list[Any]) -> Any:
    """The nuisance value with the best mean validation accuracy: chosen on val, never on test."""
    def mean_val(value: Any) -> float:
        chosen = [metric_value(r, "val_acc") for r in _at(records, nuisance, value)]
        finite = [v for v in chosen if math.isfinite(v)]
        return sum(finite) / len(finite) if finite else -math.inf

    return max(values, key=mean_val)


def compare_arms(suite: Suite, sweep: Sweep, records: list[RunRecord],
                 value: Callable[[RunRecord, str], float]) -> list[Comparison]:
    """Every (A, B) pair, per stratum, at each shared nuisance value and at each arm's best."""
    rule = suite.rule
    comparisons = []
    settings: list[Any] = [None]
    if suite.nuisance:
        settings = [*sweep.axes[suite.nuisance], "best"]
    for stratum in _strata(suite, sweep):
        in_stratum = [r for r in records if cell_values(r.config, list(stratum)) == stratum]
        for pair in suite.compare:
            a_name, b_name = pair[:2]
            arm_a = _arm_records(in_stratum, suite.arms[a_name])
            arm_b = _arm_records(in_stratum, suite.arms[b_name])
            metric_a = suite.arms[a_name].get("metric", rule.metric)
            metric_b = suite.arms[b_name].get("metric", rule.metric)
            for setting in settings:
                label_values = dict(stratum)
                if setting is None:
                    chosen_a, chosen_b = arm_a, arm_b
                elif setting == "best":
                    nuisance_values = sweep.axes[suite.nuisance]
                    best_a = _best_nuisance(arm_a, suite.nuisance, nuisance_values)
                    best_b = _best_nuisance(arm_b, suite.nuisance, nuisance_values)
                    chosen_a, chosen_b = _at(arm_a, suite.nuisance, best_a), _at(arm_b, suite.nuisance, best_b)
                    label_values[suite.nuisance] = f"best ({a_name} {best_a}, {b_name} {best_b}; chosen on val)"
                else:
                    chosen_a, chosen_b = _at(arm_a, suite.nuisance, setting), _at(arm_b, suite.nuisance, setting)
                    label_values[suite.nuisance] = setting
                seeds_a = {r.config.seed: value(r, metric_a) for r in chosen_a}
                seeds_b = {r.config.seed: value(r, metric_b) for r in chosen_b}
                seeds = sorted(seeds_a.keys() & seeds_b.keys())
                paired = paired_comparison([seeds_a[s] for s in seeds], [seeds_b[s] for s in seeds], rule.margin)
                outcome = verdict(paired, rule.margin, rule.direction)
                sentence = plain_words(paired, outcome, name_a=a_name, name_b=b_name, metric=_metric_words(rule),
                                       unit=rule.unit, scale=rule.scale, margin=rule.margin,
                                       direction=rule.direction)
                primary = len(pair) == 2 and _is_primary(suite, stratum, setting)
                comparisons.append(Comparison(_label(label_values), a_name, b_name, paired, outcome, sentence,
                                              primary))
    return comparisons


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
    """The claim's outcome over its primary comparisons: supported only if every one is;
    not supported if any is; inconclusive otherwise."""
    primary = [c for c in comparisons if c.primary] or list(comparisons)
    outcomes = {c.verdict.outcome for c in primary}
    if outcomes == {"supported"}:
        return "supported"
    if "not supported" in outcomes:
        return "not supported"
    return "inconclusive"


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


def rule_paired_difference(suite: Suite, sweep: Sweep, records: list[RunRecord]) -> tuple[list[Comparison], list]:
    return compare_arms(suite, sweep, records, metric_value), []


def rule_steps_to_target(suite: Suite, sweep: Sweep, records: list[RunRecord]) -> tuple[list[Comparison], list]:
    """Paired log-ratio of steps to the target validation accuracy (B / A), said as a ratio."""
    target = suite.rule.target or 0.97
    comparisons = compare_arms(suite, sweep, records, lambda r, _metric: math.log(max(steps_to(r, target), 1.0)))
    return [_as_ratio(c, target, suite.rule.margin) for c in comparisons], []


def _as_ratio(c: Comparison, target: float, margin: float) -> Comparison:
    from dataclasses import replace

    p = c.paired
    if p.n == 0:
        return c
    low, high = (math.exp(x) if math.isfinite(x) else math.nan for x in p.ci95)
    ci = f" (95% CI {low:.2f}x to {high:.2f}x)" if p.n > 1 else ""
    tail = {
        ("supported", "effect"): "the claim holds here",
        ("not supported", "opposite"): "the opposite of the claim",
        ("not supported", "equivalent"): f"within a factor of {math.exp(margin):.2f} either way, so no practical "
                                         "difference here",
    }.get((c.verdict.outcome, c.verdict.reason),
          f"inconclusive at this sample size: about {c.verdict.seeds_needed} paired seeds would likely settle it")
    sentence = (f"{c.name_b} reached {100 * target:.0f}% validation accuracy in {math.exp(p.diff_mean):.2f}x the "
                f"steps of {c.name_a}{ci} over {p.n} paired seed(s); {tail}.")
    return replace(c, sentence=sentence)


def rule_stable_lr(suite: Suite, sweep: Sweep, records: list[RunRecord]) -> tuple[list[Comparison], list]:
    """Divergence per arm and lr (Fisher exact), each arm's stable window, and the paired
    accuracy difference at the claim's lr (`primary`)."""
    import pandas as pd

    comparisons = compare_arms(suite, sweep, records, metric_value)
    lr_field = suite.nuisance or "train.lr"
    rows, windows = [], []
    for stratum in _strata(suite, sweep):
        in_stratum = [r for r in records if cell_values(r.config, list(stratum)) == stratum]
        for pair in suite.compare:
            a_name, b_name = pair[:2]
            stable = {}
            for arm_name in (a_name, b_name):
                arm = _arm_records(in_stratum, suite.arms[arm_name])
                best = max((_mean_acc(arm, lr_field, lr) for lr in sweep.axes[lr_field]), default=math.nan)
                stable[arm_name] = [lr for lr in sweep.axes[lr_field] if _failures(_at(arm, lr_field, lr)) == 0
                                    and _mean_acc(arm, lr_field, lr) >= best - 0.01]
            arm_a = _arm_records(in_stratum, suite.arms[a_name])
            arm_b = _arm_records(in_stratum, suite.arms[b_name])
            for lr in sweep.axes[lr_field]:
                at_a, at_b = _at(arm_a, lr_field, lr), _at(arm_b, lr_field, lr)
                rates = rate_comparison(_failures(at_a), len(at_a), _failures(at_b), len(at_b))
                rows.append({**stratum, lr_field: lr, f"{a_name} failed to train": f"{rates.failures_a}/{len(at_a)}",
                             f"{b_name} failed to train": f"{rates.failures_b}/{len(at_b)}",
                             "Fisher exact p": round(rates.p_value, 4)})
            windows.append({**stratum, **{f"{arm} stable lrs": ", ".join(map(str, stable[arm])) or "none"
                                          for arm in (a_name, b_name)},
                            **{f"{arm} largest stable lr": max(stable[arm], default=None) for arm in (a_name, b_name)}})
    tables = [("Runs that failed to train (diverged, or final train loss above ln 10), per lr", pd.DataFrame(rows)),
              ("Stable learning-rate window per arm (no failures, accuracy within 1 pp of the arm's best)",
               pd.DataFrame(windows))]
    return comparisons, tables


def _failures(runs: list[RunRecord]) -> int:
    return sum(not r.trained for r in runs)


def _mean_acc(arm: list[RunRecord], lr_field: str, lr: Any) -> float:
    values = [metric_value(r, "val_acc") for r in _at(arm, lr_field, lr)]
    return sum(values) / len(values) if values else math.nan


def rule_forgiving_fraction(suite: Suite, sweep: Sweep, records: list[RunRecord]) -> tuple[list[Comparison], list]:
    """Per arm and seed: the fraction of grid cells whose validation accuracy is within 1 pp of
    that arm's best cell (LITERATURE C8). Compared paired over seeds."""
    fraction_of_run: dict[str, float] = {}
    for arm_name in {name for pair in suite.compare for name in pair[:2]}:
        arm = _arm_records(records, suite.arms[arm_name])
        for seed in {r.config.seed for r in arm}:
            runs = [r for r in arm if r.config.seed == seed]
            values = [metric_value(r, "val_acc") for r in runs]
            fraction = sum(v >= max(values) - 0.01 for v in values) / len(values)
            fraction_of_run |= {r.config.run_id(): fraction for r in runs}
    # One number per arm and seed: compared once over all cells, not per cell.
    once = suite.model_copy(update={"within": [], "nuisance": None, "primary": {}})
    return compare_arms(once, sweep, records, lambda r, _metric: fraction_of_run[r.config.run_id()]), []


RULES: dict[str, Callable[[Suite, Sweep, list[RunRecord]], tuple[list[Comparison], list]]] = {
    "paired_difference": rule_paired_difference,
    "stable_lr": rule_stable_lr,
    "steps_to_target": rule_steps_to_target,
    "forgiving_fraction": rule_forgiving_fraction,
}


def analyze(suite: Suite, sweep: Sweep, folder: Path, budget: str, command: str,
            wall_seconds: float | None = None) -> ClaimResult:
    records = read_records(folder, sweep)
    comparisons, tables = RULES[suite.rule.name](suite, sweep, records)
    outcome = combine(comparisons)
    primary = [c for c in comparisons if c.primary] or comparisons
    summary = " ".join(c.sentence for c in primary[:2])
    if len(primary) > 2:
        summary += f" ({len(primary) - 2} more primary comparison(s) in the table.)"
    return ClaimResult(
        name=suite.name, claim=suite.claim, design=suite.design, budget=budget, outcome=outcome, summary=summary,
        rule=suite.rule.model_dump(), comparisons=comparisons, tables=tables, deviations=list(suite.deviations),
        literature=_literature_note(suite, outcome), command=command, seeds=list(sweep.seeds),
        runs=len(sweep.configs), wall_seconds=wall_seconds,
    )

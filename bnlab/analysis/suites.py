"""The claim suite format: a base config, shared grid axes, named arms, budgets and a decision
rule (bnlab/claim_suites/<name>.yaml, docs/claims.md), loaded and checked; analysis/expansion.py
turns one into its sweep.

Kept apart from the analysis (bnlab.claims) so that listing and loading suites needs neither
scipy nor torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from bnlab.config import Strict, read_yaml_mapping
from bnlab.errors import ConfigError
from bnlab.records import MAIN_PANEL

CLAIMS_DIR = Path(__file__).resolve().parents[1] / "claim_suites"  # package data: in the wheel too
MAIN = MAIN_PANEL  # the panel that the suite's own grid, compare, within, nuisance and primary describe

Pair = tuple[str, str] | tuple[str, str, Literal["secondary"]]  # (A, B[, "secondary"]): B against A


class MoreSeeds(Strict):
    where: dict[str, Any] = Field(min_length=1)  # grid axis -> value: the cells that get them
    seeds: list[int] = Field(min_length=1)
    panel: str = MAIN


class PanelBudget(Strict):
    set: dict[str, Any] = Field(default_factory=dict)  # applied after the panel's own `set`
    grid: dict[str, list[Any]] = Field(default_factory=dict)  # replaces the panel's axes
    seeds: list[int] | None = None  # the budget's by default; selection panels use seeds of their own


class Budget(Strict):
    seeds: list[int] = Field(min_length=1)
    # Extra seeds for some cells (every arm in them), where a rate test needs more runs than the
    # rest of the grid: a comparison pairs the seeds both of its arms have.
    more_seeds: list[MoreSeeds] = Field(default_factory=list)
    set: dict[str, Any] = Field(default_factory=dict)  # dotted field -> value, applied to the base
    grid: dict[str, list[Any]] = Field(default_factory=dict)  # replaces shared axes (e.g. fewer lrs)
    panels: dict[str, PanelBudget] = Field(default_factory=dict)  # the same, per panel


class Guard(Strict):
    """A guarded rule: a comparison is supported only if, on the same runs, `metric` does not move
    against `direction` by `margin` or more (docs/claims.md, "Guarded rules")."""

    metric: str
    margin: float = Field(gt=0)
    direction: Literal[1, -1] = 1  # +1: the guarding metric must not drop; -1: must not rise
    unit: str = "pp"
    scale: float = 100.0


class Rule(Strict):
    name: Literal["paired_difference", "stable_lr", "steps_to_target", "forgiving_fraction"]
    metric: str = "test_acc"  # see metric_values
    margin: float = Field(gt=0)
    direction: Literal[1, -1] = 1  # +1: the claim says B's metric is higher
    unit: str = "pp"
    scale: float = 100.0  # metric -> unit (accuracy fraction -> percentage points)
    target: float | None = None  # steps_to_target: validation accuracy to reach
    ratio: float | None = None  # stable_lr: B's largest stable lr at least this many times A's
    guard: Guard | None = None  # paired_difference only


class Panel(Strict):
    """A sub-experiment with its own changes to the base, its own grid and comparisons, and the
    suite's arms it runs (all by default). A run two panels generate alike trains once."""

    set: dict[str, Any] = Field(default_factory=dict)  # dotted field -> value, applied to the base
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    arms: list[str] | None = None
    compare: list[Pair] = Field(default_factory=list)
    within: list[str] = Field(default_factory=list)
    nuisance: str | None = None
    primary: dict[str, Any] = Field(default_factory=dict)


class Selection(Strict):
    """Where a term's `best` nuisance value is chosen: on another panel's runs (selection seeds
    the comparison does not use), by the mean of a metric, highest or lowest."""

    panel: str | None = None  # the term's own panel by default
    metric: str = "val_acc"
    lower: bool = False  # True: the smallest mean wins (steps to a target)


class Term(Strict):
    arm: str
    panel: str = MAIN
    where: dict[str, Any] = Field(default_factory=dict)  # the cell; the nuisance may be "best"
    weight: float
    select: Selection | None = None  # how `best` is chosen; highest val_acc on the term's panel by default
    metric: str | None = None  # the contrast's by default (two evaluations of the same runs differ here)


class Contrast(Strict):
    """A weighted sum over (panel, arm, cell) terms, per seed, judged like a paired difference:
    BN's loss from batch 64 to batch 4 minus the control's is +1, -1, -1, +1 over four terms."""

    name: str
    terms: list[Term] = Field(min_length=2)
    metric: str | None = None  # the rule's by default
    margin: float | None = Field(default=None, gt=0)  # the rule's by default
    direction: Literal[1, -1] | None = None  # the rule's by default
    unit: str | None = None  # the rule's unit and scale by default
    scale: float | None = None
    secondary: bool = False  # a primary comparison unless marked secondary
    # Another contrast whose 95% CI must stay above minus its margin (on its claimed side) for a
    # "not supported" here to stand; else inconclusive. ics: noisy BN keeping BN's speed-up refutes
    # "BN works by reducing ICS" only if its input drifts at least as much as without BN.
    needs: str | None = None


class FigureSpec(Strict):
    """The verdict's one picture (analysis/verdict_figure.py, docs/claims.md)."""

    kind: Literal["against", "curves", "bars"]
    title: str
    x: str = "step"  # against: a grid axis; curves: a steps.csv column (step, train_eval_loss)
    y: str = "test_acc"  # against, bars: a metric; curves: a steps.csv or layers.csv column
    also: list[str] = Field(default_factory=list)  # curves: more columns, a panel each
    ylabel: str = ""
    scale: float = 100.0  # y's unit: accuracy fractions in percent
    panel: str = MAIN
    arms: list[str] | None = None
    where: dict[str, Any] = Field(default_factory=dict)  # fixed cell values; the nuisance may be "best"
    by: str | None = None  # against: one panel per value of this axis
    log_x: bool = False
    invert_x: bool = False
    failures: bool = False  # against: a lower row with the share of runs that failed to train
    zoom: bool = True  # bars: the y axis spans the values, not from 0


class PlannedComparison(Strict):
    label: str  # a primary comparison of the pilot
    sd: float = Field(gt=0)  # the pilot's sd of its per-seed statistic
    margin: float = Field(gt=0)
    seeds: int | None  # planning.seed_plan(sd, margin).seeds
    p_supported: float
    p_not_supported: float


class SeedPlan(Strict):
    """How the full budget's seed count was decided before its data (`bnlab claim plan`): the
    pilot's seeds (none of the full budget's), each primary comparison's spread there and the
    simulated plan; `seeds` is the largest of theirs."""

    pilot_seeds: list[int] = Field(min_length=2)
    comparisons: list[PlannedComparison] = Field(min_length=1)
    seeds: int


Budgets = Literal["full", "quick", "smoke", "pilot"]  # pilot: full settings, its own seeds (claim plan)


class Suite(Strict):
    name: str
    claim: str
    design: str
    literature: str = ""
    expected: Literal["supported", "not supported", "depends", "inconclusive", "mixed"] | None = None
    base: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)  # shared axes, crossed with every arm
    # Arm name -> dotted field values; the reserved key `metric` makes an arm a measurement of the
    # same runs instead (inference-stats compares evaluation modes of one model), and
    # `not_crossed: [axis, ...]` keeps an arm out of those grid axes (a no-dropout control has no
    # dropout rate): it trains once per remaining cell and seed, and every value of the axis
    # compares against those same runs.
    arms: dict[str, dict[str, Any]] = Field(min_length=2)
    # B against A, per seed; the verdict rests on the pairs not marked secondary.
    compare: list[Pair] = Field(default_factory=list)
    within: list[str] = Field(default_factory=list)  # separate comparisons per value of these axes
    nuisance: str | None = None  # an axis tuned away: also compare each arm at its best value on val
    primary: dict[str, Any] = Field(default_factory=dict)  # within/nuisance values ("best") of the verdict
    rule: Rule
    panels: dict[str, Panel] = Field(default_factory=dict)  # sub-experiments beside the main one
    contrasts: list[Contrast] = Field(default_factory=list)  # within or across panels
    budgets: dict[Budgets, Budget]
    seed_plan: SeedPlan | None = None
    figure: FigureSpec | None = None
    spread: str | None = None  # a main-grid axis: the seed-to-seed spread along it (analysis/spread.py)
    deviations: list[str] = Field(default_factory=list)

    def panel(self, name: str) -> Panel:
        """A panel by name; the suite's own grid and comparisons are the panel `main`."""
        if name != MAIN:
            return self.panels[name]
        return Panel(grid=self.grid, compare=self.compare, within=self.within, nuisance=self.nuisance,
                     primary=self.primary)

    def panel_names(self) -> list[str]:
        return [MAIN, *self.panels]

    def panel_arms(self, name: str) -> list[str]:
        chosen = self.panel(name).arms
        return list(self.arms) if chosen is None else chosen

    def panel_grid(self, name: str, budget: str) -> dict[str, list[Any]]:
        plan = self.budgets[budget]
        if name == MAIN:
            return {**self.grid, **plan.grid}
        return {**self.panels[name].grid, **(plan.panels[name].grid if name in plan.panels else {})}

    def view(self, name: str) -> Suite:
        """Panel `name` as a suite of its own, for the rules that compare arms within one grid."""
        panel = self.panel(name)
        return self.model_copy(update={"grid": panel.grid, "compare": panel.compare, "within": panel.within,
                                       "nuisance": panel.nuisance, "primary": panel.primary, "panels": {},
                                       "contrasts": [], "arms": {arm: self.arms[arm] for arm in
                                                                 self.panel_arms(name)}})


def suite_path(name: str) -> Path:
    """A shipped suite by name, or a suite file of the user's own (a path ending in .yaml)."""
    if name.endswith((".yaml", ".yml")):
        if not Path(name).is_file():
            raise ConfigError(f"{name}: no such suite file")
        return Path(name)
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
    if MAIN in suite.panels:
        raise ConfigError(f"{path}: panels.{MAIN}: reserved for the suite's own grid and comparisons; rename it")
    if not (suite.compare or suite.contrasts or any(panel.compare for panel in suite.panels.values())):
        raise ConfigError(f"{path}: compare: empty, and no panel compares or contrast; give at least one")
    for name in suite.panel_names():
        _check_panel(path, suite, name)
    for budget_name, budget in suite.budgets.items():
        for panel_name in budget.panels:
            _known(path, f"budgets.{budget_name}.panels", panel_name, suite.panel_names(), "panels")
        for index, extra in enumerate(budget.more_seeds):
            where = f"budgets.{budget_name}.more_seeds.{index}"
            _known(path, f"{where}.panel", extra.panel, suite.panel_names(), "panels")
            budget_axes = suite.panel_grid(extra.panel, budget_name)
            for dotted, value in extra.where.items():
                if value not in budget_axes.get(dotted, []):
                    raise ConfigError(f"{path}: {where}.where: {dotted}={value!r} is not a cell of panel "
                                      f"{extra.panel}'s grid; axes: {budget_axes or 'none'}")
    for index, contrast in enumerate(suite.contrasts):
        for number, term in enumerate(contrast.terms):
            where = f"contrasts.{index}.terms.{number}"
            _known(path, f"{where}.panel", term.panel, suite.panel_names(), "panels")
            _known(path, f"{where}.arm", term.arm, suite.panel_arms(term.panel), f"panel {term.panel}'s arms")
            nuisance = suite.panel(term.panel).nuisance
            axes = _panel_axes(suite, term.panel)
            for dotted, value in term.where.items():
                if dotted not in axes:
                    raise ConfigError(f"{path}: {where}.where: {dotted} is not an axis of panel {term.panel}; "
                                      f"axes: {', '.join(sorted(axes)) or 'none'}")
                if value == "best" and term.select is not None and term.select.panel is not None:
                    _known(path, f"{where}.select.panel", term.select.panel, suite.panel_names(), "panels")
                if value == "best" and dotted != nuisance:
                    raise ConfigError(f"{path}: {where}.where: {dotted}=best: only the panel's nuisance "
                                      f"({nuisance or 'none'}) can be chosen at its best")
    plan = suite.seed_plan
    if plan is not None:
        full = suite.budgets.get("full")
        if full is None or len(full.seeds) < plan.seeds or set(full.seeds) & set(plan.pilot_seeds):
            raise ConfigError(f"{path}: seed_plan: the full budget needs at least {plan.seeds} seeds, none of them "
                              f"a pilot seed ({plan.pilot_seeds}); it has {full.seeds if full else 'no full budget'}")
    names = [contrast.name for contrast in suite.contrasts]
    for index, contrast in enumerate(suite.contrasts):
        if contrast.needs is not None and contrast.needs not in names or contrast.needs == contrast.name:
            raise ConfigError(f"{path}: contrasts.{index}.needs: {contrast.needs!r} is not another contrast; "
                              f"contrasts: {', '.join(names)}")
    if suite.spread is not None and suite.spread not in suite.grid:
        raise ConfigError(f"{path}: spread: {suite.spread} is not an axis of the suite's grid; "
                          f"axes: {', '.join(sorted(suite.grid)) or 'none'}")
    # The comparisons pick the nuisance per `within` stratum: the spread's picks match them only when
    # its axis is that one stratum.
    if suite.spread is not None and suite.within != [suite.spread]:
        raise ConfigError(f"{path}: spread: {suite.spread} must be the suite's one `within` axis "
                          f"(within: {suite.within or 'none'})")
    if suite.rule.guard is not None and suite.rule.name != "paired_difference":
        raise ConfigError(f"{path}: rule.guard: guards paired_difference only, not {suite.rule.name}")
    return suite


def _panel_axes(suite: Suite, name: str) -> set[str]:
    """Every axis panel `name` varies at some budget."""
    return set(suite.panel(name).grid).union(*(budget.panels[name].grid if name in budget.panels else
                                              budget.grid if name == MAIN else {}
                                              for budget in suite.budgets.values()))


def _known(path: Path, where: str, name: str, allowed: Sequence[str], what: str) -> None:
    if name not in allowed:
        raise ConfigError(f"{path}: {where}: unknown {name!r}; {what}: {', '.join(allowed)}")


def _check_panel(path: Path, suite: Suite, name: str) -> None:
    """A panel's arms, comparisons and primary refer to what it has; an arm sets no axis it varies."""
    panel, prefix = suite.panel(name), "" if name == MAIN else f"panels.{name}."
    for arm in panel.arms or []:
        _known(path, f"{prefix}arms", arm, list(suite.arms), "arms")
    arms = suite.panel_arms(name)
    for pair in panel.compare:
        for arm in pair[:2]:
            _known(path, f"{prefix}compare", arm, arms, "arms" if name == MAIN else f"panel {name}'s arms")
    all_axes = set().union(*(_panel_axes(suite, other) for other in suite.panel_names()))
    axes = _panel_axes(suite, name)
    for arm_name in arms:
        arm = suite.arms[arm_name]
        outside = arm.get("not_crossed", [])
        if not isinstance(outside, list) or not all(isinstance(axis, str) and axis in all_axes for axis in outside):
            raise ConfigError(f"{path}: arms.{arm_name}.not_crossed: {outside!r} must list grid axes; axes: "
                              f"{', '.join(sorted(all_axes)) or 'none'}")
        for dotted in sorted((set(arm_fields(arm)) & axes) - set(outside)):
            of_panel = "" if name == MAIN else f" of panel {name}"
            raise ConfigError(f"{path}: arms.{arm_name}: sets {dotted}, which is also a grid axis{of_panel}; an arm "
                              "may not set what the grid varies (unless the arm is not_crossed with it)")
    for dotted in panel.primary:
        if dotted not in (*panel.within, panel.nuisance):
            allowed = [*panel.within, *([panel.nuisance] if panel.nuisance else [])]
            raise ConfigError(f"{path}: {prefix}primary: {dotted} is neither a `within` axis nor the nuisance; "
                              f"allowed: {', '.join(allowed) or 'none'}")


def serves(cell: dict[str, Any], where: dict[str, Any]) -> bool:
    """Whether an arm's grid cell serves the values `where`. An axis the arm is not crossed with
    is absent from its cell, and any value of it is served by the same run."""
    return all(cell[dotted] == value for dotted, value in where.items() if dotted in cell)


ARM_KEYS = ("metric", "not_crossed")  # what an arm says besides config fields


def arm_fields(arm: dict[str, Any]) -> dict[str, Any]:
    """The config fields an arm sets (its `metric` is how its runs are measured, `not_crossed`
    the grid axes it stays out of)."""
    return {dotted: value for dotted, value in arm.items() if dotted not in ARM_KEYS}


def cell_label(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items()) or "all runs"

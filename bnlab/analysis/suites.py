"""The claim suite format: a base config, shared grid axes, named arms, budgets and a decision
rule (bnlab/claim_suites/<name>.yaml, docs/claims.md), and the sweep that a suite is.

Kept apart from the analysis (bnlab.claims) so that listing and loading suites needs neither
scipy nor torch.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from bnlab.config import Config, Strict, apply_overrides, describe, read_yaml_mapping, set_dotted
from bnlab.config.spec import Sweep, expand
from bnlab.errors import ConfigError

CLAIMS_DIR = Path(__file__).resolve().parents[1] / "claim_suites"  # package data: in the wheel too


class MoreSeeds(Strict):
    where: dict[str, Any] = Field(min_length=1)  # grid axis -> value: the cells that get them
    seeds: list[int] = Field(min_length=1)


class Budget(Strict):
    seeds: list[int] = Field(min_length=1)
    # Extra seeds for some cells (every arm in them), where a rate test needs more runs than the
    # rest of the grid: a comparison pairs the seeds both of its arms have.
    more_seeds: list[MoreSeeds] = Field(default_factory=list)
    set: dict[str, Any] = Field(default_factory=dict)  # dotted field -> value, applied to the base
    grid: dict[str, list[Any]] = Field(default_factory=dict)  # replaces shared axes (e.g. fewer lrs)


class Rule(Strict):
    name: Literal["paired_difference", "stable_lr", "steps_to_target", "forgiving_fraction"]
    metric: str = "test_acc"  # see metric_values
    margin: float = Field(gt=0)
    direction: Literal[1, -1] = 1  # +1: the claim says B's metric is higher
    unit: str = "pp"
    scale: float = 100.0  # metric -> unit (accuracy fraction -> percentage points)
    target: float | None = None  # steps_to_target: validation accuracy to reach
    ratio: float | None = None  # stable_lr: B's largest stable lr at least this many times A's


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
    axes = set(suite.grid).union(*(budget.grid for budget in suite.budgets.values()))
    for arm_name, arm in suite.arms.items():
        outside = arm.get("not_crossed", [])
        if not isinstance(outside, list) or not all(isinstance(axis, str) and axis in axes for axis in outside):
            raise ConfigError(f"{path}: arms.{arm_name}.not_crossed: {outside!r} must list grid axes; axes: "
                              f"{', '.join(sorted(axes)) or 'none'}")
        for dotted in sorted((set(arm_fields(arm)) & axes) - set(outside)):
            raise ConfigError(f"{path}: arms.{arm_name}: sets {dotted}, which is also a grid axis; an arm may "
                              "not set what the grid varies (unless the arm is not_crossed with it)")
    for budget_name, budget in suite.budgets.items():
        budget_axes = {**suite.grid, **budget.grid}
        for index, extra in enumerate(budget.more_seeds):
            for dotted, value in extra.where.items():
                if value not in budget_axes.get(dotted, []):
                    raise ConfigError(f"{path}: budgets.{budget_name}.more_seeds.{index}.where: {dotted}={value!r} is "
                                      f"not a cell of the grid; axes: {budget_axes or 'none'}")
    for dotted in suite.primary:
        if dotted not in (*suite.within, suite.nuisance):
            allowed = [*suite.within, *([suite.nuisance] if suite.nuisance else [])]
            raise ConfigError(f"{path}: primary: {dotted} is neither a `within` axis nor the nuisance; allowed: "
                              f"{', '.join(allowed) or 'none'}")
    return suite


def suite_sweep(suite: Suite, budget: str, overrides: Sequence[str],
                spec_text: str) -> tuple[Sweep, list[dict[str, Any]]]:
    """Every run of the suite at `budget`: base + budget settings + user overrides, crossed with
    the arms, the shared axes and the seeds. Validated up front like any sweep. Also returns the
    members: one {arm, cell, seed, run_id} per (arm, cell, seed), the run that serves it (what
    records.write_arms keeps), so the analysis selects runs by the arm that generated them."""
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
    configs: dict[str, Config] = {}
    generated_by: dict[str, str] = {}  # run id -> the first arm that generated it
    members = []
    for arm_name, arm in suite.arms.items():
        crossed = {dotted: values for dotted, values in grid.items() if dotted not in arm.get("not_crossed", [])}
        for cell, seed, cfg in expand(base_raw, crossed, plan.seeds, f"claim {suite.name}: arm {arm_name}",
                                      fixed=arm_fields(arm), more_seeds=lambda cell: _more_seeds(plan, cell)):
            run_id = cfg.run_id()
            other = generated_by.setdefault(run_id, arm_name)
            # Only arms declared as measurements of the same runs (equal fields, each its own
            # `metric`) may share one; any other two arms generating one run is a design error.
            if other != arm_name and arm_fields(suite.arms[other]) != arm_fields(arm):
                raise ConfigError(f"claim {suite.name}: arms {other} and {arm_name} generate the same run "
                                  f"({cell_label(cell)}, seed {seed}); give them different fields, or make "
                                  "them measurements of one run (equal fields, each its own metric)")
            configs.setdefault(run_id, cfg)
            members.append({"arm": arm_name, "cell": cell, "seed": seed, "run_id": run_id})
    set_by_arms = sorted({dotted for arm in suite.arms.values() for dotted in arm_fields(arm)})
    axes = {dotted: list({repr(arm.get(dotted)): arm.get(dotted) for arm in suite.arms.values()}.values())
            for dotted in set_by_arms}
    axes |= grid
    return Sweep(name=name, spec_text=spec_text, base=base, axes=axes, seeds=list(plan.seeds),
                 configs=list(configs.values())), members


def serves(cell: dict[str, Any], where: dict[str, Any]) -> bool:
    """Whether an arm's grid cell serves the values `where`. An axis the arm is not crossed with
    is absent from its cell, and any value of it is served by the same run."""
    return all(cell[dotted] == value for dotted, value in where.items() if dotted in cell)


def _more_seeds(plan: Budget, cell: dict[str, Any]) -> list[int]:
    """The extra seeds of the cells `cell` serves, so a control gets the seeds its comparisons pair with."""
    return [seed for extra in plan.more_seeds if serves(cell, extra.where) for seed in extra.seeds]


ARM_KEYS = ("metric", "not_crossed")  # what an arm says besides config fields


def arm_fields(arm: dict[str, Any]) -> dict[str, Any]:
    """The config fields an arm sets (its `metric` is how its runs are measured, `not_crossed`
    the grid axes it stays out of)."""
    return {dotted: value for dotted, value in arm.items() if dotted not in ARM_KEYS}


def cell_label(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items()) or "all runs"

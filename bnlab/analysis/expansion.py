"""A claim suite as a sweep: every run of every panel at a budget, validated up front, and the
members (panel, arm, cell, seed) each run serves, which the claim test records in arms.csv."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from bnlab.analysis.suites import MAIN, Budget, Suite, arm_fields, cell_label, serves
from bnlab.config import Config, apply_overrides, describe, set_dotted
from bnlab.config.spec import Sweep, expand
from bnlab.errors import ConfigError


def suite_sweep(suite: Suite, budget: str, overrides: Sequence[str],
                spec_text: str) -> tuple[Sweep, list[dict[str, Any]]]:
    """Every run of the suite at `budget`: per panel, base + budget settings + the panel's own +
    user overrides, crossed with the panel's arms, axes and seeds. Validated up front like any
    sweep. Also returns the members: one {panel, arm, cell, seed, run_id} per (panel, arm, cell,
    seed), the run that serves it (what records.write_arms keeps), so the analysis selects runs by
    the arm that generated them; a run two panels generate alike is trained once."""
    if budget not in suite.budgets:
        raise ConfigError(f"--budget {budget}: not defined for {suite.name}; allowed: {', '.join(suite.budgets)}")
    plan = suite.budgets[budget]
    name = f"claim-{suite.name}-{budget}"
    configs: dict[str, Config] = {}
    members = []
    bases: dict[str, Config] = {}
    for panel_name in suite.panel_names():
        base_raw = _panel_base(suite, panel_name, budget, overrides)
        base_raw["name"] = name
        source = f"claim {suite.name}" + ("" if panel_name == MAIN else f": panel {panel_name}")
        try:
            bases[panel_name] = Config.model_validate(base_raw)
        except ValidationError as err:
            raise ConfigError(f"{source}: base: {describe(err)}") from None
        grid = suite.panel_grid(panel_name, budget)
        generated_by: dict[str, str] = {}  # run id -> the first arm of this panel that generated it
        for arm_name in suite.panel_arms(panel_name):
            arm = suite.arms[arm_name]
            crossed = {dotted: values for dotted, values in grid.items() if dotted not in arm.get("not_crossed", [])}
            seeds = (plan.panels[panel_name].seeds if panel_name in plan.panels else None) or plan.seeds
            for cell, seed, cfg in expand(base_raw, crossed, seeds, f"{source}: arm {arm_name}",
                                          fixed=arm_fields(arm),
                                          more_seeds=lambda cell, panel=panel_name: _more_seeds(plan, panel, cell)):
                run_id = cfg.run_id()
                other = generated_by.setdefault(run_id, arm_name)
                # Only arms declared as measurements of the same runs (equal fields, each its own
                # `metric`) may share one within a panel; any other two arms generating one run
                # are a design error. Across panels, sharing a run is the point.
                if other != arm_name and arm_fields(suite.arms[other]) != arm_fields(arm):
                    raise ConfigError(f"{source}: arms {other} and {arm_name} generate the same run "
                                      f"({cell_label(cell)}, seed {seed}); give them different fields, or make "
                                      "them measurements of one run (equal fields, each its own metric)")
                configs.setdefault(run_id, cfg)
                members.append({"panel": panel_name, "arm": arm_name, "cell": cell, "seed": seed, "run_id": run_id})
    return Sweep(name=name, spec_text=spec_text, base=bases[MAIN], axes=_sweep_axes(suite, budget, bases),
                 seeds=list(plan.seeds), configs=list(configs.values())), members


def _panel_base(suite: Suite, panel: str, budget: str, overrides: Sequence[str]) -> dict[str, Any]:
    """The suite's base, the budget's `set`, the user's overrides, then the panel's own settings
    and the budget's for the panel: what a panel sets is its design, as a grid's axes are, so an
    override of the base does not undo it."""
    plan = suite.budgets[budget]
    base_raw = copy.deepcopy(suite.base)
    for dotted, value in plan.set.items():
        set_dotted(base_raw, dotted.split("."), value)
    apply_overrides(base_raw, overrides)
    if panel != MAIN:
        for setting in (suite.panels[panel].set, plan.panels[panel].set if panel in plan.panels else {}):
            for dotted, value in setting.items():
                set_dotted(base_raw, dotted.split("."), value)
    return base_raw


def _sweep_axes(suite: Suite, budget: str, bases: dict[str, Config]) -> dict[str, list[Any]]:
    """What the sweep varies: every field an arm sets, the main grid (whose values replace an arm's,
    as for a not-crossed control), then each other panel's base settings and axes, each value once.
    runs.csv has a column for each."""
    from bnlab.config import cell_values

    plan = suite.budgets[budget]
    set_by_arms = sorted({dotted for arm in suite.arms.values() for dotted in arm_fields(arm)})
    axes = {dotted: list({repr(arm.get(dotted)): arm.get(dotted) for arm in suite.arms.values()}.values())
            for dotted in set_by_arms}
    axes |= suite.panel_grid(MAIN, budget)
    for name, panel in suite.panels.items():
        settings = [*panel.set, *(plan.panels[name].set if name in plan.panels else {})]
        extra = {dotted: [cell_values(base, [dotted])[dotted] for base in bases.values()] for dotted in settings}
        for dotted, values in {**extra, **suite.panel_grid(name, budget)}.items():
            axes[dotted] = list({repr(value): value for value in [*axes.get(dotted, []), *values]}.values())
    return axes


def _more_seeds(plan: Budget, panel: str, cell: dict[str, Any]) -> list[int]:
    """The extra seeds of the cells `cell` serves, so a control gets the seeds its comparisons pair with."""
    return [seed for extra in plan.more_seeds if extra.panel == panel and serves(cell, extra.where)
            for seed in extra.seeds]

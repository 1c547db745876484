"""Seeds decided before the data: from a pilot's spread, the smallest number of paired seeds at
which the suite's own verdict rule judges a true effect of twice the margin supported, and a true
effect of 0 not supported, each with at least PLAN_POWER probability (docs/claims.md, "Seed
plans"). An effect equal to the margin cannot be the target: "supported" needs a mean of at
least the margin, so it comes out about half the time whatever the seeds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PLAN_POWER = 0.8
PLAN_REPS = 20000  # simulated experiments per (effect, n): the rates' standard error is below 0.3 pp
PLAN_MAX_SEEDS = 40
PLAN_MIN_SEEDS = 3


@dataclass(frozen=True)
class SeedPlan:
    sd: float  # the pilot's sd of the per-seed statistic (differences, log-ratios, contrasts)
    margin: float
    seeds: int | None  # None: not even PLAN_MAX_SEEDS would do
    p_supported: float  # at that n, P(supported | true effect 2 x margin)
    p_not_supported: float  # at that n, P(not supported | true effect 0)


def simulated_outcomes(draws: Any, margin: float) -> tuple[Any, Any]:
    """Per row of `draws` (one simulated experiment's per-seed statistics, the claimed side
    positive): whether the verdict rule (stats.verdict: the same three tests in the same order)
    judges it supported, and whether not supported. Vectorised, so a plan simulates in seconds;
    tests/analysis/test_stats.py checks it against stats.verdict row by row."""
    import numpy as np
    from scipy import stats

    n = draws.shape[1]
    mean = draws.mean(axis=1)
    se = draws.std(axis=1, ddof=1) / np.sqrt(n)
    t95, t90 = stats.t.ppf(0.975, n - 1), stats.t.ppf(0.95, n - 1)
    supported = (mean - t95 * se > 0) & (mean >= margin)
    opposite = ~supported & (mean + t95 * se < 0)
    equivalent = ~supported & ~opposite & (mean - t90 * se > -margin) & (mean + t90 * se < margin)
    return supported, opposite | equivalent


def outcome_rates(effect: float, sd: float, n: int, margin: float, reps: int = PLAN_REPS,
                  seed: int = 0) -> tuple[float, float]:
    """(P(supported), P(not supported)) over `reps` simulated experiments of n paired seeds whose
    per-seed statistic is normal with mean `effect` (on the claimed side when positive) and sd `sd`."""
    import numpy as np

    supported, not_supported = simulated_outcomes(np.random.default_rng(seed).normal(effect, sd, size=(reps, n)),
                                                  margin)
    return float(supported.mean()), float(not_supported.mean())


def seed_plan(sd: float, margin: float) -> SeedPlan:
    """The smallest n (from PLAN_MIN_SEEDS) at which both targets reach PLAN_POWER."""
    if not (sd > 0 and margin > 0):
        raise ValueError(f"need a positive sd and margin (got sd={sd}, margin={margin})")
    rates = (0.0, 0.0)
    for n in range(PLAN_MIN_SEEDS, PLAN_MAX_SEEDS + 1):
        rates = (outcome_rates(2 * margin, sd, n, margin)[0], outcome_rates(0.0, sd, n, margin)[1])
        if min(rates) >= PLAN_POWER:
            return SeedPlan(sd, margin, n, *rates)
    return SeedPlan(sd, margin, None, *rates)

"""bnlab.analysis.stats against scipy (oracle), hand-computed small cases, every verdict branch and its sentence."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from bnlab.analysis.planning import (
    PLAN_MIN_SEEDS,
    PLAN_POWER,
    outcome_rates,
    seed_plan,
    simulated_outcomes,
)
from bnlab.analysis.stats import (
    PROJECTION_POWER,
    Paired,
    paired_comparison,
    plain_words,
    rate_comparison,
    seeds_to_settle,
    summarize,
    verdict,
    verdict_probability,
)

A = [0.970, 0.972, 0.968, 0.975, 0.971]
B = [0.973, 0.976, 0.969, 0.979, 0.972]  # B - A = 0.003, 0.004, 0.001, 0.004, 0.001
WORDS = dict(name_a="before-activation", name_b="after-activation", metric="test accuracy", unit="pp", scale=100)


def no_warnings(fn, *args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn(*args, **kwargs)
    assert [str(w.message) for w in caught] == []
    return result


def test_paired_matches_scipy() -> None:
    p = paired_comparison(A, B, margin=0.002)
    a, b = np.array(A), np.array(B)
    ref = stats.ttest_rel(b, a)
    assert p.n == 5
    assert p.diffs == pytest.approx(tuple(b - a))
    assert p.diff_mean == pytest.approx(np.mean(b - a)) and p.diff_sd == pytest.approx(np.std(b - a, ddof=1))
    assert (p.mean_a, p.mean_b) == pytest.approx((np.mean(a), np.mean(b)))
    assert p.ci95 == pytest.approx(tuple(ref.confidence_interval(0.95)))
    assert p.ci90 == pytest.approx(tuple(ref.confidence_interval(0.90)))
    assert p.p_value == pytest.approx(ref.pvalue)
    assert p.welch_p == pytest.approx(stats.ttest_ind(b, a, equal_var=False).pvalue)
    assert p.sign_p == pytest.approx(stats.binomtest(5, 5).pvalue) == pytest.approx(0.0625)  # docs/literature.md
    lower = stats.ttest_1samp(b - a, -0.002, alternative="greater").pvalue
    upper = stats.ttest_1samp(b - a, 0.002, alternative="less").pvalue
    assert p.tost_p == pytest.approx(max(lower, upper))


def test_paired_by_hand() -> None:
    # d = 1, 2, 3: mean 2, sd 1, se 1/sqrt(3); t(0.975, 2) = 4.302652729749464, t(0.95, 2) = 2.919985580355516
    p = paired_comparison([0.0, 0.0, 0.0], [1.0, 2.0, 3.0], margin=0.5)
    assert (p.diff_mean, p.diff_sd) == pytest.approx((2.0, 1.0))
    assert p.ci95 == pytest.approx((2 - 4.302652729749464 / math.sqrt(3), 2 + 4.302652729749464 / math.sqrt(3)))
    assert p.ci90 == pytest.approx((2 - 2.919985580355516 / math.sqrt(3), 2 + 2.919985580355516 / math.sqrt(3)))
    assert p.p_value == pytest.approx(2 * stats.t.sf(2 * math.sqrt(3), 2))
    assert p.sign_p == pytest.approx(0.25)  # 3 of 3 positive: 2 * 0.5**3


def test_welch_with_one_constant_arm_matches_formula_without_warning() -> None:
    # Arm A constant: Welch reduces to a one-sample t on B with n-1 df.
    p = no_warnings(paired_comparison, [0.9, 0.9, 0.9], [0.91, 0.93, 0.92], margin=0.01)
    b = np.array([0.91, 0.93, 0.92])
    t = (b.mean() - 0.9) / (b.std(ddof=1) / math.sqrt(3))
    assert p.welch_p == pytest.approx(2 * stats.t.sf(t, 2))


def test_zero_variance_differences_give_point_ci_and_no_warnings() -> None:
    p = no_warnings(paired_comparison, [0.90, 0.92, 0.94], [0.91, 0.93, 0.95], margin=0.02)
    assert p.diff_sd == 0.0 and p.ci95 == p.ci90 == (p.diff_mean, p.diff_mean)
    assert (p.p_value, p.tost_p, p.sign_p) == (0.0, 0.0, 0.25)
    same = no_warnings(paired_comparison, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5], margin=0.01)
    assert (same.diff_mean, same.p_value, same.welch_p, same.sign_p, same.tost_p) == (0.0, 1.0, 1.0, 1.0, 0.0)
    assert no_warnings(verdict, same, 0.01, 1).reason == "equivalent"


def test_single_seed_has_no_ci_and_too_few_seeds() -> None:
    p = no_warnings(paired_comparison, [0.97], [0.98], margin=0.002)
    assert p.n == 1 and p.diff_mean == pytest.approx(0.01)
    assert all(math.isnan(x) for x in (*p.ci95, *p.ci90, p.p_value, p.welch_p, p.sign_p, p.tost_p, p.diff_sd))
    v = verdict(p, 0.002, 1)
    assert (v.outcome, v.reason, v.seeds_needed) == ("inconclusive", "too few seeds", 3)
    assert plain_words(p, v, margin=0.002, direction=1, **WORDS) == (
        "after-activation scored 1.00 pp higher than before-activation on test accuracy in a single seed; "
        "with 1 seed no confidence interval is possible: run at least 3 seeds.")


def test_non_finite_pairs_are_dropped() -> None:
    p = paired_comparison([0.9, float("nan"), 0.8, 0.7], [0.95, 0.9, None, 0.72], margin=0.01)
    assert p.n == 2 and p.diffs == pytest.approx((0.05, 0.02))
    assert paired_comparison([float("nan")], [1.0], margin=1).n == 0


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="got 2 and 1"):
        paired_comparison([1, 2], [1], margin=1)
    with pytest.raises(ValueError, match="margin must be positive"):
        paired_comparison([1, 2], [1, 2], margin=0)
    with pytest.raises(ValueError, match="direction must be"):
        verdict(paired_comparison([1, 2], [1, 2], margin=1), 1, 0)
    with pytest.raises(ValueError, match="arm b"):
        rate_comparison(0, 3, 4, 3)


def p_with(diffs: list[float], margin: float) -> Paired:
    return paired_comparison([0.0] * len(diffs), diffs, margin)


@pytest.mark.parametrize(
    ("diffs", "direction", "expected"),
    [
        ([0.010, 0.012, 0.011, 0.009, 0.013], 1, ("supported", "effect")),
        ([-0.010, -0.012, -0.011, -0.009, -0.013], -1, ("supported", "effect")),  # claim says B < A
        ([-0.010, -0.012, -0.011, -0.009, -0.013], 1, ("not supported", "opposite")),
        ([-0.0005, -0.0007, -0.0006, -0.0004, -0.0008], 1, ("not supported", "opposite")),  # also inside margin
        ([0.0005, -0.0004, 0.0002, -0.0001, 0.0003], 1, ("not supported", "equivalent")),
        ([0.004, -0.002, 0.003, -0.001, 0.001], 1, ("inconclusive", "inconclusive")),
        ([0.0013, 0.0023, 0.0016, 0.0020, 0.0018], 1, ("inconclusive", "inconclusive")),  # real, maybe < margin
    ],
)
def test_every_verdict_branch(diffs: list[float], direction: int, expected: tuple[str, str]) -> None:
    v = verdict(p_with(diffs, 0.002), 0.002, direction)
    assert (v.outcome, v.reason) == expected
    assert (v.seeds_needed is None) == (expected[0] != "inconclusive")


def _simulated_verdicts(effect: float, sd: float, n: int, margin: float, draws: int, rng) -> np.ndarray:
    """Whether a verdict is reached, per simulated experiment of n paired seeds drawn as the
    projection assumes, by the seed planner's vectorised rule (checked against the real one below)."""
    supported, not_supported = simulated_outcomes(rng.normal(effect, sd, (draws, n)), margin)
    return supported | not_supported


def test_simulated_rule_is_the_real_rule() -> None:
    """The planner's vectorised rule gives every simulated experiment the real verdict's outcome."""
    rng = np.random.default_rng(3)
    for effect, sd, n in [(0.001, 0.002, 6), (0.004, 0.003, 4), (-0.001, 0.001, 5), (0.0, 0.0008, 8)]:
        draws = rng.normal(effect, sd, (60, n))
        supported, not_supported = simulated_outcomes(draws, 0.002)
        for row, yes, no in zip(draws, supported, not_supported, strict=True):
            real = verdict(paired_comparison([0.0] * n, list(row), 0.002), 0.002, 1).outcome
            assert (real == "supported", real == "not supported") == (yes, no)


def test_a_seed_plan_meets_both_targets_and_one_seed_fewer_does_not() -> None:
    """At the planned n, a true effect of twice the margin is judged supported and a true 0 not
    supported, each with at least 80% probability; at n - 1 one of them falls short."""
    plan = seed_plan(0.0015, 0.002)
    assert plan.seeds is not None and plan.seeds > PLAN_MIN_SEEDS
    assert min(plan.p_supported, plan.p_not_supported) >= PLAN_POWER
    before = (outcome_rates(0.004, 0.0015, plan.seeds - 1, 0.002)[0],
              outcome_rates(0.0, 0.0015, plan.seeds - 1, 0.002)[1])
    assert min(before) < PLAN_POWER
    assert seed_plan(0.0015, 0.002) == plan  # seeded: a suite's plan is recomputable
    assert seed_plan(0.02, 0.002).seeds is None  # ten times the margin: equivalence out of reach


@pytest.mark.parametrize(
    ("effect", "sd", "n"),
    [
        (0.010, 0.006, 3),  # far above the margin, noisy: a few more seeds do (the old z formula said 85)
        (0.001, 0.002, 3),  # between 0 and the margin: settled only by equivalence, many seeds
        (0.000, 0.004, 5),  # no effect, noisy
        (-0.003, 0.004, 3),  # against the claim
        (0.0025, 0.001, 3),  # just above the margin, precise
    ],
)
def test_seed_projection_holds_by_simulation(effect: float, sd: float, n: int) -> None:
    """The projected n reaches a verdict with 80% probability when the effect and spread hold, and
    the n before it does not (20000 simulated experiments, +-3 SE)."""
    margin, draws, rng = 0.002, 20000, np.random.default_rng(7)
    needed = seeds_to_settle(effect, sd, n, margin)
    assert needed is not None and needed > n
    tolerance = 3 * math.sqrt(PROJECTION_POWER * (1 - PROJECTION_POWER) / draws)
    assert _simulated_verdicts(effect, sd, needed, margin, draws, rng).mean() >= PROJECTION_POWER - tolerance
    if needed - 1 > max(n, 2):
        assert _simulated_verdicts(effect, sd, needed - 1, margin, draws, rng).mean() < PROJECTION_POWER + tolerance
    assert verdict_probability(effect, sd, needed, margin) >= PROJECTION_POWER


def test_seed_projection_edge_cases() -> None:
    assert seeds_to_settle(float("nan"), float("nan"), 0, 0.002) == 3  # nothing to go on: the protocol's minimum
    assert seeds_to_settle(0.001, 0.0, 4, 0.002) == 5  # no spread: one more seed
    assert seeds_to_settle(0.002, 0.004, 3, 0.002) is None  # exactly at the margin: never 80%
    assert seeds_to_settle(0.001, 0.013, 5, 0.002) is None  # inside the margin but so noisy: over 1000
    p = p_with([0.004, -0.002, 0.003, -0.001, 0.001], 0.002)
    assert verdict(p, 0.002, 1).seeds_needed == seeds_to_settle(p.diff_mean, p.diff_sd, 5, 0.002)


def test_plain_words_exact_text() -> None:
    # d = 11 +- (1, 1, 0, 2, 2) / 1000: sd 1.58e-3, half-width 2.776 * sd / sqrt(5) = 1.96e-3 -> 0.90 to 1.30 pp
    p = p_with([0.010, 0.012, 0.011, 0.009, 0.013], 0.002)
    assert plain_words(p, verdict(p, 0.002, 1), margin=0.002, direction=1, **WORDS) == (
        "after-activation scored 1.10 pp higher than before-activation on test accuracy (95% CI 0.90 to 1.30) "
        "over 5 paired seeds; the mean clears the 0.2 pp margin and the CI's end nearest 0 is 0.90 pp, so the claim "
        "holds here.")
    # d = (4, -4, 2, -2, 0) / 10000: mean 0, sd 3.16e-4, 90% half-width 2.132 * sd / sqrt(5) = 3.0e-4 < margin
    p = p_with([0.0004, -0.0004, 0.0002, -0.0002, 0.0], 0.002)
    assert plain_words(p, verdict(p, 0.002, 1), margin=0.002, direction=1, **WORDS) == (
        "after-activation scored the same as before-activation on test accuracy (95% CI -0.04 to 0.04) "
        "over 5 paired seeds; its 90% CI (-0.03 to 0.03) is within the ±0.2 pp margin, so the choice made no "
        "practical difference here.")
    # No unit (a loss): numbers stand alone, and the margin's decimals follow the margin (0.05 -> 3 decimals).
    p = p_with([-0.10, -0.12, -0.11, -0.09, -0.13], 0.05)
    words = dict(WORDS, metric="test NLL", unit="", scale=1)
    assert plain_words(p, verdict(p, 0.05, -1), margin=0.05, direction=-1, **words) == (
        "after-activation scored 0.110 lower than before-activation on test NLL (95% CI -0.130 to -0.090) "
        "over 5 paired seeds; the mean clears the 0.05 margin and the CI's end nearest 0 is -0.090, so the claim "
        "holds here.")


@pytest.mark.parametrize(
    ("diffs", "phrases"),
    [
        ([-0.010, -0.012, -0.011, -0.009, -0.013], ["1.10 pp lower", "the opposite of the claim (the CI's end "
                                                     "nearest 0 is -0.90 pp, against the 0.2 pp margin)."]),
        ([-0.0005, -0.0007, -0.0006, -0.0004, -0.0008], ["opposite of the claim",
                                                          ", though within the ±0.2 pp margin."]),
        ([0.004, -0.002, 0.003, -0.001, 0.001], ["the CI spans 0 and reaches 0.42 pp on the claim's side, against the "
                                              "0.2 pp margin; inconclusive at this sample size; projection: if the "
                                              "effect and spread seen so far held, "]),
        ([0.0013, 0.0023, 0.0016, 0.0020, 0.0018], ["the claim but the CI's end nearest 0 (0.13 pp) is short of the "
                                                    "0.2 pp margin, so it is inconclusive"]),
    ],
)
def test_plain_words_per_branch(diffs: list[float], phrases: list[str]) -> None:
    p = p_with(diffs, 0.002)
    v = verdict(p, 0.002, 1)
    text = plain_words(p, v, margin=0.002, direction=1, **WORDS)
    assert all(phrase in text for phrase in phrases), text
    assert "-0.00" not in text
    if v.seeds_needed is not None:
        assert f"{v.seeds_needed} paired seeds would reach a verdict with 80% probability" in text


def test_plain_words_without_seeds() -> None:
    p = paired_comparison([], [], margin=0.002)
    v = verdict(p, 0.002, 1)
    assert plain_words(p, v, margin=0.002, direction=1, **WORDS) == (
        "No paired seeds compare after-activation with before-activation on test accuracy; run at least 3 seeds.")


def test_rate_comparison_is_fisher_exact() -> None:
    r = rate_comparison(0, 3, 3, 3)
    assert r.p_value == pytest.approx(stats.fisher_exact([[0, 3], [3, 0]]).pvalue) == pytest.approx(0.1)
    assert (r.rate_a, r.rate_b) == (0.0, 1.0)
    assert r.min_p == pytest.approx(0.1) and not r.can_reach_significance  # 3 against 3 can never show it
    assert rate_comparison(0, 5, 0, 5).can_reach_significance  # 5 against 5: p = 0.0079 at best
    # Clopper-Pearson: 0/3 -> [0, 1 - 0.025^(1/3)], 3/3 -> [0.025^(1/3), 1]
    assert r.ci_a == pytest.approx((0.0, 1 - 0.025 ** (1 / 3))) and r.ci_b == pytest.approx((0.025 ** (1 / 3), 1.0))
    assert no_warnings(rate_comparison, 0, 0, 2, 3).p_value == 1.0


def test_summarize_ignores_nan_and_none() -> None:
    s = summarize([1.0, float("nan"), 2.0, None, 3.0, float("inf")])
    half = stats.t.ppf(0.975, 2) * 1.0 / math.sqrt(3)
    assert s == pytest.approx({"mean": 2.0, "sd": 1.0, "n": 3, "ci95_low": 2 - half, "ci95_high": 2 + half,
                               "min": 1.0, "max": 3.0})
    one = summarize([float("nan"), 0.5])
    assert one["n"] == 1 and one["mean"] == 0.5 and math.isnan(one["sd"]) and math.isnan(one["ci95_low"])
    empty = summarize([])
    assert empty["n"] == 0 and math.isnan(empty["mean"])
    flat = no_warnings(summarize, [0.98, 0.98, 0.98])
    assert (flat["sd"], flat["ci95_low"], flat["ci95_high"]) == (0.0, 0.98, 0.98)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=2, max_size=12))
def test_ci95_contains_mean_and_covers_ci90(pairs: list[tuple[float, float]]) -> None:
    a, b = zip(*pairs, strict=True)
    p = no_warnings(paired_comparison, a, b, margin=0.01)
    assert p.ci95[0] <= p.ci90[0] <= p.diff_mean <= p.ci90[1] <= p.ci95[1]
    if p.diff_sd > 0:
        assert p.ci95[1] - p.ci95[0] > p.ci90[1] - p.ci90[0]

"""Statistics behind every claim verdict (docs/literature.md): paired seeds, the margin rule, rates.

Pure numbers in, numbers and sentences out: no torch, no pandas, no files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

NAN = float("nan")
NAN_PAIR = (NAN, NAN)
MIN_SEEDS = 3  # the protocol's minimum per arm
ALPHA = 0.05
PROJECTION_POWER = 0.8
PROJECTION_MAX_SEEDS = 1000


@dataclass(frozen=True)
class Paired:
    """Arm B against arm A over seeds paired by seed; every difference is B - A."""

    n: int
    mean_a: float
    mean_b: float
    diff_mean: float
    diff_sd: float
    ci95: tuple[float, float]  # paired t, n-1 df: the verdict's CI
    ci90: tuple[float, float]  # paired t: inside (-margin, margin) is TOST at alpha 0.05
    p_value: float  # two-sided paired t-test
    welch_p: float  # Welch t-test on the unpaired arms, reported beside the paired one
    sign_p: float  # exact two-sided sign test over the nonzero differences
    tost_p: float  # equivalence against the margin: the larger of the two one-sided p's
    diffs: tuple[float, ...]


@dataclass(frozen=True)
class Verdict:
    outcome: str  # "supported" | "not supported" | "inconclusive"
    reason: str  # "effect" | "opposite" | "equivalent" | "too few seeds" | "inconclusive"
    # Inconclusive only: the paired seeds at which, if the effect and spread seen so far held, a
    # verdict would be reached with PROJECTION_POWER probability (None: no number of seeds would).
    seeds_needed: int | None


@dataclass(frozen=True)
class RateComparison:
    failures_a: int
    total_a: int
    failures_b: int
    total_b: int
    p_value: float  # two-sided Fisher exact test on the 2x2 table
    ci_a: tuple[float, float]  # exact (Clopper-Pearson) 95% interval of arm A's failure rate
    ci_b: tuple[float, float]
    min_p: float  # the smallest p-value the test could give with these totals

    @property
    def rate_a(self) -> float:
        return self.failures_a / self.total_a if self.total_a else NAN

    @property
    def rate_b(self) -> float:
        return self.failures_b / self.total_b if self.total_b else NAN

    @property
    def can_reach_significance(self) -> bool:
        return self.min_p < ALPHA


def _constant(x: np.ndarray) -> bool:
    # scipy warns (and its t is meaningless) once the spread is below ~10 eps of the mean; exactly
    # equal scores are common with few seeds, so such data takes the closed-form branch instead.
    # Variance that underflows to 0 (spreads near 1e-160) is as degenerate for the t-test.
    mean = float(np.mean(x))
    return float(np.max(np.abs(x - mean))) <= 16 * np.finfo(float).eps * abs(mean) or float(np.var(x)) == 0


def _point_p(effect: float) -> float:
    # Zero variance: any nonzero effect is certain, a zero one shows nothing.
    return 0.0 if effect != 0 else 1.0


def _welch_p(a: np.ndarray, b: np.ndarray) -> float:
    """Equals scipy.stats.ttest_ind(b, a, equal_var=False).pvalue; by hand so a constant arm needs no warning."""
    var_a = 0.0 if _constant(a) else float(np.var(a, ddof=1))
    var_b = 0.0 if _constant(b) else float(np.var(b, ddof=1))
    se_a, se_b = var_a / len(a), var_b / len(b)
    effect = float(np.mean(b) - np.mean(a))
    if se_a + se_b == 0:
        return _point_p(effect)
    # Welch-Satterthwaite df, written in shares of the total so tiny variances cannot underflow to 0/0.
    share_a, share_b = se_a / (se_a + se_b), se_b / (se_a + se_b)
    df = 1 / (share_a**2 / (len(a) - 1) + share_b**2 / (len(b) - 1))
    return float(2 * stats.t.sf(abs(effect) / math.sqrt(se_a + se_b), df))


def paired_comparison(a: Sequence[float], b: Sequence[float], margin: float) -> Paired:
    """Compare B with A where a[i] and b[i] share seed i.

    Pairs where either value is NaN/inf/None are dropped (n counts what is left), so one failed
    metric does not sink the comparison; the caller reports failures beside it. With n < 2 no CI
    or p-value exists: they are NaN. Differences with zero variance give the point as the CI and
    p = 0 for a nonzero mean (1 for zero), TOST p = 0 inside the margin (1 outside), no warnings.
    """
    if len(a) != len(b):
        raise ValueError(f"paired arms need one value per seed each (got {len(a)} and {len(b)})")
    if not margin > 0:
        raise ValueError(f"margin must be positive (got {margin})")
    xa = np.array([NAN if v is None else v for v in a], dtype=float)
    xb = np.array([NAN if v is None else v for v in b], dtype=float)
    keep = np.isfinite(xa) & np.isfinite(xb)
    xa, xb = xa[keep], xb[keep]
    d = xb - xa
    n = len(d)
    if n == 0:
        return Paired(0, NAN, NAN, NAN, NAN, NAN_PAIR, NAN_PAIR, NAN, NAN, NAN, NAN, ())
    mean_a, mean_b, diff_mean = float(np.mean(xa)), float(np.mean(xb)), float(np.mean(d))
    diffs = tuple(float(v) for v in d)
    if n == 1:
        return Paired(1, mean_a, mean_b, diff_mean, NAN, NAN_PAIR, NAN_PAIR, NAN, NAN, NAN, NAN, diffs)

    nonzero = int(np.count_nonzero(d))
    # No nonzero difference: the sign test has nothing to count, and nothing to reject.
    sign_p = float(stats.binomtest(int(np.sum(d > 0)), nonzero).pvalue) if nonzero else 1.0
    welch_p = _welch_p(xa, xb)
    if _constant(d):
        point = (diff_mean, diff_mean)
        tost_p = 0.0 if abs(diff_mean) < margin else 1.0
        return Paired(n, mean_a, mean_b, diff_mean, 0.0, point, point, _point_p(diff_mean), welch_p, sign_p, tost_p,
                      diffs)
    res = stats.ttest_rel(xb, xa)
    ci95, ci90 = res.confidence_interval(0.95), res.confidence_interval(0.90)
    # TOST: reject "d <= -margin" and "d >= +margin"; equivalence needs both, hence the max.
    tost_p = max(stats.ttest_1samp(d, -margin, alternative="greater").pvalue,
                 stats.ttest_1samp(d, margin, alternative="less").pvalue)
    return Paired(n, mean_a, mean_b, diff_mean, float(np.std(d, ddof=1)), (float(ci95.low), float(ci95.high)),
                  (float(ci90.low), float(ci90.high)), float(res.pvalue), welch_p, sign_p, float(tost_p), diffs)


def verdict_probability(effect: float, sd: float, n: int, margin: float, quadrature: int = 400) -> float:
    """The probability that `verdict` reaches an outcome (not inconclusive) with n paired seeds whose
    differences are normal with mean `effect` (on the claimed side when positive) and sd `sd`.

    t-based and exact up to the quadrature: the sample mean is normal around `effect`, the sample
    sd independent of it with (n-1) s^2 / sd^2 ~ chi^2(n-1); for each of `quadrature` quantiles of
    s the three outcomes' probabilities are normal tails of the mean. Supported (CI above 0 and the
    mean at least the margin) excludes equivalent (the 90% CI inside +-margin); opposite (CI below
    0) may overlap equivalent, so the overlap is counted once."""
    if n < 2 or not sd > 0:
        raise ValueError(f"need n >= 2 and sd > 0 (got n={n}, sd={sd})")
    quantiles = (np.arange(quadrature) + 0.5) / quadrature
    sample_se = sd * np.sqrt(stats.chi2.ppf(quantiles, n - 1) / (n - 1)) / math.sqrt(n)
    se = sd / math.sqrt(n)
    t95, t90 = stats.t.ppf(0.975, n - 1), stats.t.ppf(0.95, n - 1)

    def below(x: np.ndarray) -> np.ndarray:  # P(sample mean < x)
        return stats.norm.cdf((x - effect) / se)

    supported = 1 - below(np.maximum(t95 * sample_se, margin))
    opposite = below(-t95 * sample_se)
    low, high = -margin + t90 * sample_se, margin - t90 * sample_se
    equivalent = np.where(low < high, below(high) - below(low), 0.0)
    both = np.where(low < -t95 * sample_se, np.clip(below(-t95 * sample_se) - below(low), 0, None), 0.0)
    return float(np.mean(supported + opposite + equivalent - both))


def seeds_to_settle(effect: float, sd: float, n: int, margin: float) -> int | None:
    """A projection: the paired seeds at which, if the effect (signed, on the claimed side when
    positive) and the spread seen so far held, the verdict would be reached with 80% probability.
    Never fewer than n + 1 or the protocol's 3. With no spread to go on (n < 2) it is the protocol's
    minimum; None when no number up to PROJECTION_MAX_SEEDS would do (an effect at the margin, or a
    small effect inside it with a wide spread)."""
    if n < 2 or not math.isfinite(sd):
        return max(MIN_SEEDS, n + 1)
    if sd == 0:
        return n + 1  # zero spread: one more identical difference settles it
    lo = max(MIN_SEEDS, n + 1)
    if verdict_probability(effect, sd, PROJECTION_MAX_SEEDS, margin) < PROJECTION_POWER:
        return None
    # The probability is not monotone in n everywhere (the supported and equivalent regions trade
    # places near the margin), so walk up in steps, then back to the first n that reaches it.
    step = lo
    while verdict_probability(effect, sd, step, margin) < PROJECTION_POWER:
        step = min(PROJECTION_MAX_SEEDS, step * 2)
    first = step
    for candidate in range(lo, step):
        if verdict_probability(effect, sd, candidate, margin) >= PROJECTION_POWER:
            first = candidate
            break
    return first


def verdict(p: Paired, margin: float, direction: int) -> Verdict:
    """The shared verdict rule (docs/literature.md); `direction` is +1 if the claim says B > A, -1 if it says B < A.

    Checked in this order, the first match wins:
      supported/effect:         95% CI entirely on the claimed side of 0 and direction*mean >= margin;
      not supported/opposite:   95% CI entirely on the other side of 0 (even if also inside the
                                margin: a real effect against the claim is the stronger statement);
      not supported/equivalent: 90% CI strictly inside (-margin, +margin), i.e. TOST at alpha 0.05;
      inconclusive:             anything else, including a CI on the claimed side whose mean falls
                                short of the margin yet is not shown equivalent (real but maybe too
                                small to matter), and n < 2 ("too few seeds").
    """
    if direction not in (1, -1):
        raise ValueError(f"direction must be +1 or -1 (got {direction})")
    if not margin > 0:
        raise ValueError(f"margin must be positive (got {margin})")
    if p.n < 2:
        return Verdict("inconclusive", "too few seeds", seeds_to_settle(NAN, NAN, p.n, margin))
    low, high = sorted(direction * bound for bound in p.ci95)  # flipped so the claimed side is > 0
    if low > 0 and direction * p.diff_mean >= margin:
        return Verdict("supported", "effect", None)
    if high < 0:
        return Verdict("not supported", "opposite", None)
    if -margin < p.ci90[0] and p.ci90[1] < margin:
        return Verdict("not supported", "equivalent", None)
    return Verdict("inconclusive", "inconclusive", seeds_to_settle(direction * p.diff_mean, p.diff_sd, p.n, margin))


def clopper_pearson(failures: int, total: int) -> tuple[float, float]:
    """The exact 95% interval of a rate; (nan, nan) with no runs."""
    if total == 0:
        return NAN_PAIR
    ci = stats.binomtest(failures, total).proportion_ci(confidence_level=0.95, method="exact")
    return float(ci.low), float(ci.high)


def _fisher_p(failures_a: int, total_a: int, failures_b: int, total_b: int) -> float:
    if total_a == 0 or total_b == 0:
        return 1.0
    table = [[failures_a, total_a - failures_a], [failures_b, total_b - failures_b]]
    return float(stats.fisher_exact(table).pvalue)


def rate_comparison(failures_a: int, total_a: int, failures_b: int, total_b: int) -> RateComparison:
    """Failure counts per arm (diverged, failed or did not train) with a two-sided Fisher exact
    test, exact intervals per arm, and the smallest p the test could reach with these totals (all
    failures in one arm, none in the other): 3 runs against 3 can never go below 0.1."""
    for name, failures, total in (("a", failures_a, total_a), ("b", failures_b, total_b)):
        if not 0 <= failures <= total:
            raise ValueError(f"arm {name}: need 0 <= failures <= total (got {failures} of {total})")
    min_p = min(_fisher_p(total_a, total_a, 0, total_b), _fisher_p(0, total_a, total_b, total_b))
    return RateComparison(failures_a, total_a, failures_b, total_b, _fisher_p(failures_a, total_a, failures_b, total_b),
                          clopper_pearson(failures_a, total_a), clopper_pearson(failures_b, total_b), min_p)


def summarize(values: Sequence[float | None]) -> dict[str, float]:
    """mean, sd (ddof=1), n, ci95_low/ci95_high (t-interval), min, max over the finite values only.

    NaN, inf and None are skipped, so n counts only what entered the numbers; sd and the CI are NaN
    below 2 values, everything but n is NaN with none. A constant sample has a zero-width CI.
    """
    x = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = len(x)
    out = {"mean": NAN, "sd": NAN, "n": n, "ci95_low": NAN, "ci95_high": NAN, "min": NAN, "max": NAN}
    if n == 0:
        return out
    mean = float(np.mean(x))
    out.update(mean=mean, min=float(np.min(x)), max=float(np.max(x)))
    if n >= 2:
        sd = 0.0 if _constant(x) else float(np.std(x, ddof=1))
        half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
        out.update(sd=sd, ci95_low=mean - half, ci95_high=mean + half)
    return out


def _num(x: float, digits: int) -> str:
    text = f"{x:.{digits}f}"
    return text.lstrip("-") if float(text) == 0 else text  # never print "-0.00"


def plain_words(p: Paired, v: Verdict, *, name_a: str, name_b: str, metric: str, unit: str, scale: float,
                margin: float, direction: int) -> str:
    """One or two sentences for a practitioner: the effect, its 95% CI, n, and what that means.

    `scale` turns metric units into `unit` (100 for an accuracy fraction in pp). Numbers carry one
    decimal more than the margin's leading digit (0.2 pp -> 0.12 pp). Names are used as given.
    """
    size = margin * scale
    digits = max(0, 1 - math.floor(math.log10(size)))

    def amount(x: float) -> str:
        return f"{_num(x * scale, digits)} {unit}".rstrip()

    bound = f"the {size:g} {unit}".rstrip() + " margin"  # "clears the 0.2 pp margin"
    band = bound.replace("the ", "the ±", 1)  # "within the ±0.2 pp margin"
    if p.n == 0:
        return f"No paired seeds compare {name_b} with {name_a} on {metric}; run at least {v.seeds_needed} seeds."
    if float(_num(p.diff_mean * scale, digits)) == 0:
        head = f"{name_b} scored the same as {name_a} on {metric}"
    else:
        side = "higher" if p.diff_mean > 0 else "lower"
        head = f"{name_b} scored {amount(abs(p.diff_mean))} {side} than {name_a} on {metric}"
    if v.reason == "too few seeds":
        return (f"{head} in a single seed; with 1 seed no confidence interval is possible: "
                f"run at least {v.seeds_needed} seeds.")
    low, high = (_num(x * scale, digits) for x in p.ci95)  # B - A, signed, in `unit` as the effect is
    head += f" (95% CI {low} to {high}) over {p.n} paired seeds"
    # Every sentence shows where the CI ends beside the margin: how far "supported" is from "the
    # effect is at least the margin", or how far an inconclusive CI reaches.
    nearest_zero = amount(min(p.ci95, key=abs))
    if v.reason == "effect":
        return f"{head}; the mean clears {bound} and the CI's end nearest 0 is {nearest_zero}, so the claim holds here."
    if v.reason == "opposite":
        inside = -margin < p.ci90[0] and p.ci90[1] < margin
        return (f"{head}; that is the opposite of the claim (the CI's end nearest 0 is {nearest_zero}, against "
                f"{bound})" + (f", though within {band}." if inside else "."))
    if v.reason == "equivalent":
        lo90, hi90 = (_num(x * scale, digits) for x in p.ci90)
        return (f"{head}; its 90% CI ({lo90} to {hi90}) is within {band}, so the choice made no practical "
                "difference here.")
    if v.reason == "inconclusive":
        if min(direction * x for x in p.ci95) > 0:  # the CI excludes 0 on the claimed side
            where = (f"the direction matches the claim but the CI's end nearest 0 ({nearest_zero}) is short of "
                     f"{bound}, so it is ")
        else:
            reach = amount(max(p.ci95, key=lambda x: direction * x))
            where = f"the CI spans 0 and reaches {reach} on the claim's side, against {bound}; "
        if v.seeds_needed is None:
            projection = (f"projection: with the effect and spread seen so far, not even {PROJECTION_MAX_SEEDS} "
                          "paired seeds would likely settle it (the effect sits near the margin, or the spread is "
                          "wide)")
        else:
            projection = (f"projection: if the effect and spread seen so far held, {v.seeds_needed} paired seeds "
                          f"would reach a verdict with {PROJECTION_POWER:.0%} probability")
        return f"{head}; {where}inconclusive at this sample size; {projection}."
    raise ValueError(f"verdict reason: unknown {v.reason!r}; allowed: effect, opposite, equivalent, "
                     "too few seeds, inconclusive")

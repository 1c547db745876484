"""A reader's recheck of a finding from its runs.csv and verdict.json alone: pandas and scipy, no
bnlab analysis. Each per-seed value from its runs, then n, mean, CI and outcome from the margin
and direction, by docs/claims.md's rules written out independently. An unknown kind fails."""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path
from typing import Any

import pandas as pd
from scipy import stats

KINDS = ("paired_difference", "log_ratio", "fraction", "contrast", "largest_stable_lr")
LOG_KINDS = ("log_ratio", "largest_stable_lr")
# An absolute path: a '/' after no word, URL, path or closing-tag character, then a name.
ABSOLUTE_PATH = re.compile(r"(?<![\w:/.<-])/[A-Za-z_][\w.-]*(?:/[\w.-]+)*")
EMBEDDED = re.compile(r"data:[\w/+.-]+;base64,[A-Za-z0-9+/=]+")


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _rows(runs: pd.DataFrame, arm: str, panel: str) -> pd.DataFrame:
    """The runs.csv rows of `arm` in `panel` (a finding from before panels has one, main)."""
    in_panel = runs["panel"] == panel if "panel" in runs.columns else panel == "main"
    return runs[(runs["arm"] == arm) & in_panel]


def _run_value(runs: pd.DataFrame, run_id: str, arm: str, column: str, panel: str = "main") -> float | None:
    rows = _rows(runs, arm, panel)
    row = rows[rows["run_id"] == run_id]
    assert len(row) == 1, f"{panel} {arm} {run_id}: {len(row)} rows in runs.csv"
    row = row.iloc[0]
    value = row[column]
    return float(value) if row["status"] == "done" and pd.notna(value) else None


def _per_seed_value(comparison: dict[str, Any], runs: pd.DataFrame, arm: str, run_ids: list[str],
                    side: str) -> float | None:
    kind = comparison["kind"]
    if kind == "fraction":  # the share of the arm's cells within `tolerance` of the best (its own, or both arms')
        panel = comparison.get("panel", "main")
        values = [_run_value(runs, run_id, arm, "val_acc", panel) for run_id in run_ids]
        reference = values
        if comparison.get("reference") == "both arms":
            row = next(r for r in comparison["per_seed"] if run_ids in (r["runs_a"], r["runs_b"]))
            reference = [_run_value(runs, run_id, name, "val_acc", panel)
                         for name, ids in ((comparison["a"], row["runs_a"]), (comparison["b"], row["runs_b"]))
                         for run_id in ids]
        finite = [v for v in reference if v is not None]
        best = max(finite) if finite else math.nan
        return sum(v is not None and v >= best - comparison["tolerance"] for v in values) / len(values)
    if kind == "largest_stable_lr":  # the largest lr whose run trained within `tolerance` of the best val_acc
        rows = _rows(runs, arm, comparison.get("panel", "main"))
        lrs = {run_id: float(rows[rows["run_id"] == run_id].iloc[0][comparison["selection"]["axis"]])
               for run_id in run_ids}
        values = {run_id: _run_value(runs, run_id, arm, "val_acc", comparison.get("panel", "main"))
                  for run_id in run_ids}
        finite = [v for v in values.values() if v is not None]
        if not finite:
            return None
        return max(lrs[r] for r, v in values.items() if v is not None and v >= max(finite) - comparison["tolerance"])
    assert len(run_ids) == 1, f"{kind}: one run per seed and arm, got {run_ids}"
    column = comparison.get("metric") or comparison[f"metric_{side}"]
    return _run_value(runs, run_ids[0], arm, column, comparison.get("panel", "main"))


def _outcome(d: list[float], margin: float, direction: int) -> tuple[str, str, list[float], list[float]]:
    n = len(d)
    mean = sum(d) / n
    if n < 2:
        return "inconclusive", "too few seeds", [math.nan] * 2, [math.nan] * 2
    sd = pd.Series(d).std(ddof=1)
    if sd <= 16 * 2.2e-16 * abs(mean) or sd == 0:
        ci95 = ci90 = [mean, mean]
    else:
        se = sd / math.sqrt(n)
        ci95 = [mean - stats.t.ppf(0.975, n - 1) * se, mean + stats.t.ppf(0.975, n - 1) * se]
        ci90 = [mean - stats.t.ppf(0.95, n - 1) * se, mean + stats.t.ppf(0.95, n - 1) * se]
    low, high = sorted(direction * x for x in ci95)
    if low > 0 and direction * mean >= margin:
        return "supported", "effect", ci95, ci90
    if high < 0:
        return "not supported", "opposite", ci95, ci90
    if -margin < ci90[0] and ci90[1] < margin:
        return "not supported", "equivalent", ci95, ci90
    return "inconclusive", "inconclusive", ci95, ci90


def recheck(folder: Path) -> int:
    """Recompute every comparison of the finding in `folder`; returns how many were checked."""
    verdict = json.loads((folder / "verdict.json").read_text())
    assert verdict.get("format") == 1, f"{folder}: verdict.json format {verdict.get('format')!r}, want 1"
    runs = pd.read_csv(folder / "runs.csv")
    for number, comparison in enumerate(verdict["comparisons"]):
        where = f"{folder.name} comparison {number} ({comparison['label']})"
        assert comparison["kind"] in KINDS, f"{where}: unknown kind {comparison['kind']!r}"
        d = _contrast_values(comparison, runs, where) if comparison["kind"] == "contrast" else _differences(
            comparison, runs, where)
        assert comparison["n"] == len(d) and comparison["n_dropped"] == len(comparison["per_seed"]) - len(d), where
        if not d:
            assert comparison["outcome"] == "inconclusive", where
            continue
        outcome, reason, ci95, ci90 = _outcome(d, comparison["margin"], comparison["direction"])
        if "guard" in comparison:
            outcome, reason = _recheck_guard(comparison, runs, outcome, reason, where)
        if comparison.get("needs") and outcome == "not supported":
            needed = next(c for c in verdict["comparisons"] if c.get("name") == comparison["needs"])
            low = min(needed["direction"] * x for x in needed["ci"]) if needed["n"] >= 2 else -math.inf
            if not low > -needed["margin"]:
                outcome, reason = "inconclusive", f"needs {needed['name']}"
        assert _close(comparison["mean"], sum(d) / len(d)), where
        for ours, theirs in ((ci95, comparison["ci"]), (ci90, comparison["ci90"])):
            assert all(_close(x, y) if not math.isnan(x) else y is None for x, y in zip(ours, theirs, strict=True)), (
                where, ours, theirs)
        assert (comparison["outcome"], comparison["reason"]) == (outcome, reason), where
        if comparison["kind"] == "contrast":
            continue  # its picks and failures are per term, checked with its values
        if comparison["selection"]["selection"] == "best":
            for arm in (comparison["a"], comparison["b"]):
                rows = _rows(runs, arm, comparison.get("panel", "main"))
                _recheck_pick(comparison["selection"], comparison["stratum"], rows, arm, where)
        _recheck_failures(comparison, runs, where)
    for row in verdict.get("spread", []):
        _recheck_spread(row, runs, f"{folder.name} spread at {row['axis']}={row['value']} ({row['a']}, {row['b']})")
    return len(verdict["comparisons"])


def _recheck_spread(row: dict[str, Any], runs: pd.DataFrame, where: str) -> None:
    """Each side's pick (best mean val_acc at that axis value), its runs, n, sd over seeds, and the
    Brown-Forsythe p of the two sides' values."""
    samples = []
    for side in ("a", "b"):
        rows = _rows(runs, row[side], "main")
        at_value = rows[_matches(rows[row["axis"]], row["value"])]
        if row["nuisance"]:
            picked = {row[side]: row[f"{side}_pick"]}
            _recheck_pick({"axis": row["nuisance"], "candidates": row["candidates"], "picked": picked},
                          {row["axis"]: row["value"]}, rows, row[side], where)
            at_value = at_value[_matches(at_value[row["nuisance"]], row[f"{side}_pick"])]
        assert sorted(at_value["run_id"]) == row[f"{side}_runs"], where
        values = at_value[at_value["status"] == "done"][row["metric"]].dropna().tolist()
        sd = float(pd.Series(values).std()) if len(values) >= 2 else None
        assert row[f"{side}_n"] == len(values) and _close(sd, row[f"{side}_sd"]), (where, side)
        assert row[f"{side}_failed"] == len(at_value) - len(values), (where, side)
        samples.append(values)
    testable = all(len(v) >= 3 for v in samples) and any(pd.Series(v).std() > 0 for v in samples)
    # Brown-Forsythe by its definition, not scipy's levene: a one-way ANOVA of |x - median| per side.
    deviations = [[abs(x - statistics.median(values)) for x in values] for values in samples]
    p = float(stats.f_oneway(*deviations).pvalue) if testable else math.nan
    p = p if math.isfinite(p) else None
    assert _close(p, row["brown_forsythe_p"]), (where, p, row["brown_forsythe_p"])


def _differences(comparison: dict[str, Any], runs: pd.DataFrame, where: str) -> list[float]:
    """B - A per seed (a log-ratio for log_ratio), each value from its run's row."""
    d = []
    for row in comparison["per_seed"]:
        a = _per_seed_value(comparison, runs, comparison["a"], row["runs_a"], "a")
        b = _per_seed_value(comparison, runs, comparison["b"], row["runs_b"], "b")
        assert _close(a, row["value_a"]) and _close(b, row["value_b"]), (where, row, a, b)
        if a is not None and b is not None:
            d.append(math.log(b / a) if comparison["kind"] in LOG_KINDS else b - a)
    return d


def _contrast_values(comparison: dict[str, Any], runs: pd.DataFrame, where: str) -> list[float]:
    """Per seed, the sum of weight x the term's run's metric; a seed with a run that did not train
    is left out. Each term's pick (a nuisance at its best) and failure count checked too."""
    terms = comparison["terms"]
    for index, term in enumerate(terms):
        rows = _rows(runs, term["arm"], term["panel"])
        if "selection" in term:
            selection = term["selection"]
            fixed = {k: v for k, v in term["where"].items() if k != selection["axis"]}
            source = _rows(runs, term["arm"], selection.get("panel", term["panel"]))
            _recheck_pick({**selection, "picked": {term["arm"]: selection["picked"]}}, fixed, source, term["arm"],
                          where, selection.get("metric", "val_acc"), selection.get("lower", False))
        counted = [row["runs"][index][0] for row in comparison["per_seed"]]
        statuses = rows[rows["run_id"].isin(counted)]
        assert len(statuses) == len(counted) == term["failures"]["total"], where
        assert int((statuses["status"] != "done").sum()) == term["failures"]["failed"], (where, term)
        for dotted, value in term["cell"].items():
            assert _matches(statuses[dotted], value).all(), (where, term, dotted)
    values = []
    for row in comparison["per_seed"]:
        per_term = [_run_value(runs, run_ids[0], term["arm"], term.get("metric", comparison["metric"]),
                               term["panel"])
                    for term, run_ids in zip(terms, row["runs"], strict=True)]
        assert all(_close(ours, theirs if theirs is None or math.isfinite(theirs) else None)
                   for ours, theirs in zip(per_term, row["values"], strict=True)), (where, row, per_term)
        if all(value is not None for value in per_term):
            value = sum(term["weight"] * value for term, value in zip(terms, per_term, strict=True))
            assert _close(value, row["value"]), (where, row, value)
            values.append(value)
        else:
            assert row["value"] is None, (where, row)
    return values


def _recheck_guard(comparison: dict[str, Any], runs: pd.DataFrame, outcome: str, reason: str,
                   where: str) -> tuple[str, str]:
    """The guard's per-seed values from the comparison's own runs, its CI against its margin, and
    the guarded outcome (docs/claims.md, "Guarded rules")."""
    guard = comparison["guard"]
    d = []
    for row, mine in zip(comparison["per_seed"], guard["per_seed"], strict=True):
        a = _run_value(runs, row["runs_a"][0], comparison["a"], guard["metric"], comparison.get("panel", "main"))
        b = _run_value(runs, row["runs_b"][0], comparison["b"], guard["metric"], comparison.get("panel", "main"))
        assert mine["seed"] == row["seed"] and _close(a, mine["value_a"]) and _close(b, mine["value_b"]), where
        if a is not None and b is not None:
            d.append(b - a)
    assert guard["n"] == len(d), where
    state = "unsettled"
    if len(d) >= 2:
        _, _, ci95, _ = _outcome(d, guard["margin"], guard["direction"])
        assert all(_close(x, y) for x, y in zip(ci95, guard["ci"], strict=True)), (where, ci95, guard["ci"])
        low, high = sorted(guard["direction"] * x for x in ci95)
        state = "holds" if low > -guard["margin"] else "fails" if high < -guard["margin"] else "unsettled"
    assert guard["outcome"] == state, (where, guard["outcome"], state)
    if state == "fails":
        return "not supported", "guard fails"
    if outcome == "supported" and state != "holds":
        return "inconclusive", "guard unsettled"
    return outcome, reason


def _recheck_failures(comparison: dict[str, Any], runs: pd.DataFrame, where: str) -> None:
    """Per arm: the runs counted, how many did not train (status other than done), their exact
    interval, and the Fisher exact p of the two counts."""
    failures = comparison["failures"]
    counts = {}
    for side in ("a", "b"):
        rows = _rows(runs, comparison[side], comparison.get("panel", "main"))
        counted = rows[rows["run_id"].isin(failures[f"runs_{side}"])]
        assert len(counted) == len(failures[f"runs_{side}"]) == failures[f"total_{side}"], where
        counts[side] = int((counted["status"] != "done").sum())
        assert counts[side] == failures[side], (where, side, counts[side], failures[side])
        ci = stats.binomtest(counts[side], len(counted)).proportion_ci(method="exact")
        assert _close(ci.low, failures[f"ci_{side}"][0]) and _close(ci.high, failures[f"ci_{side}"][1]), where
    table = [[counts["a"], failures["total_a"] - counts["a"]], [counts["b"], failures["total_b"] - counts["b"]]]
    assert _close(stats.fisher_exact(table).pvalue, failures["fisher_p"]), where


def _recheck_pick(selection: dict[str, Any], stratum: dict[str, Any], rows: pd.DataFrame, arm: str,
                  where: str, metric: str = "val_acc", lower: bool = False) -> None:
    """The arm's pick is the candidate with the highest (or, `lower`, lowest) mean `metric` over its
    runs that trained among `rows` (its runs.csv rows in the panel chosen on) in the stratum."""
    axis = selection["axis"]
    at_stratum = rows
    for dotted, value in stratum.items():
        at_stratum = at_stratum[_matches(at_stratum[dotted], value)]
    means = {}
    for candidate in selection["candidates"]:
        trained = at_stratum[_matches(at_stratum[axis], candidate) & (at_stratum["status"] == "done")]
        finite = trained[metric].dropna()
        means[json.dumps(candidate)] = finite.mean() if len(finite) else (math.inf if lower else -math.inf)
    best = (min if lower else max)(means, key=means.get)
    assert best == json.dumps(selection["picked"][arm]), (where, arm, means)


def _matches(column: pd.Series, value: Any) -> pd.Series:
    """Which cells of a runs.csv column hold `value`: numbers compared as numbers (pandas reads an
    integer column with empty cells as floats), anything else as runs.csv writes it."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return pd.to_numeric(column, errors="coerce") == value
    return column.astype(str) == _csv_text(value)


def _csv_text(value: Any) -> str:
    """A value as runs.csv writes it (lists as JSON), to compare with a column read as text."""
    return json.dumps(value) if isinstance(value, list) else str(value)


def absolute_paths(folder: Path) -> list[str]:
    """Every absolute path named in the finding's text files, embedded images skipped."""
    found = []
    for path in sorted(folder.rglob("*")):
        if path.suffix in (".md", ".html", ".json", ".csv"):
            text = EMBEDDED.sub("", path.read_text())
            found += [f"{path.name}: {match}" for match in ABSOLUTE_PATH.findall(text)]
    return found
